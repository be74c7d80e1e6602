"""File formats: MRC volumes and stacks, RELION STAR, cryoSPARC ``.cs``, cryoDRGN pickles, and one
:class:`ParticleDataset` that streams images with their metadata whatever the source.

Every reader returns a :class:`Particles` in cryolens' conventions (docs/CONVENTIONS.md) and every writer
takes one; bad input raises :class:`~cryolens.errors.InputError` naming the file; outputs are
written atomically.
"""

from .convert import convert, write_particles
from .cryodrgn import (apply_pickles, read_cryodrgn, read_ctf_pickle, read_pose_pickle, write_cryodrgn_ctf,
                       write_cryodrgn_poses)
from .cryosparc import read_cs, write_cs
from .dataset import ParticleDataset, iterate_batches, read_images, read_particles
from .mrc import (MrcInfo, StackWriter, mrc_info, open_stack, read_volume, stack_info, write_stack,
                  write_volume)
from .particles import Particles
from .star import read_star, write_star

__all__ = [
    "MrcInfo", "ParticleDataset", "Particles", "StackWriter", "apply_pickles", "convert", "iterate_batches",
    "mrc_info", "open_stack", "read_cryodrgn", "read_cs", "read_ctf_pickle", "read_images", "read_particles",
    "read_pose_pickle", "read_star", "read_volume", "stack_info", "write_cryodrgn_ctf", "write_cryodrgn_poses",
    "write_cs", "write_particles", "write_stack", "write_star", "write_volume",
]
