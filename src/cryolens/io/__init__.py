"""File formats: MRC volumes and stacks, RELION STAR, cryoSPARC ``.cs``, cryoDRGN pickles, and one
:class:`ParticleDataset` that streams images with their metadata whatever the source.

Every reader returns a :class:`Particles` in cryolens' conventions (docs/CONVENTIONS.md) and every writer
takes one; bad input raises :class:`~cryolens.errors.InputError` naming the file; outputs are
written atomically.
"""

import importlib

# each name's module, imported on first use: ``cryolens.io.star_table`` or ``.mrc`` alone needs no torch
_WHERE = {
    "convert": "convert", "write_particles": "convert", "apply_pickles": "cryodrgn", "read_cryodrgn": "cryodrgn",
    "read_ctf_pickle": "cryodrgn", "read_pose_pickle": "cryodrgn", "write_cryodrgn_ctf": "cryodrgn",
    "write_cryodrgn_poses": "cryodrgn", "read_cs": "cryosparc", "write_cs": "cryosparc",
    "ParticleDataset": "dataset", "iterate_batches": "dataset", "read_images": "dataset", "read_particles": "dataset",
    "MrcInfo": "mrc", "StackWriter": "mrc", "mrc_info": "mrc", "open_stack": "mrc", "read_volume": "mrc",
    "stack_info": "mrc", "write_stack": "mrc", "write_volume": "mrc", "Particles": "particles",
    "read_star": "star", "write_star": "star",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MrcInfo", "ParticleDataset", "Particles", "StackWriter", "apply_pickles", "convert", "iterate_batches",
    "mrc_info", "open_stack", "read_cryodrgn", "read_cs", "read_ctf_pickle", "read_images", "read_particles",
    "read_pose_pickle", "read_star", "read_volume", "stack_info", "write_cryodrgn_ctf", "write_cryodrgn_poses",
    "write_cs", "write_particles", "write_stack", "write_star", "write_volume",
]
