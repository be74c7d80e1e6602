"""cryoDRGN2 (Zhong, Lerer, Davis, Berger 2021, ICCV; cryoDRGN's ``abinit_homo`` / ``abinit_het``): ab
initio reconstruction with poses unknown. The neural volume of :mod:`~cryolens.methods.cryodrgn` is
trained on the one engine while each image's pose is found by a hierarchical pose search against the
volume being trained: the inference strategy :class:`~cryolens.inference.online_search.PoseSearch`
(its schedule, frequency marching and ``search_mode`` in that module's docstring). A last search
(``final_search``) against the final map follows the last epoch, so the poses returned match it.

One deliberate difference: the search scores slices of the neural volume *rendered once to a voxel
grid* (2× oversampled, trilinear) rather than evaluating the MLP at every candidate pose — the same
function up to interpolation, and on a CPU thousands of times cheaper. The heterogeneous variant
(``heterogeneous=true``) searches against the map at the mean ``z`` of the current latents (cryoDRGN2
evaluates each image's own ``z``).

Outputs as :mod:`~cryolens.methods.cryodrgn`, plus the estimated rotations and shifts (px) per image and
the record of every search (``pose_searches`` in the metrics).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import InputError
from ..inference.distributed import barrier, is_main
from ..inference.latent_model import CryoDRGN, mean_latent
from ..inference.online_search import PoseSearch, PoseSearchSchedule, upgrade_checkpoint
from ..inference.training import hartley_std
from ..io.particles import Particles
from .config import option
from .cryodrgn import CryoDRGNConfig
from .registry import MethodOutputs
from .training import latent_outputs, train, write_model_json


@dataclass(frozen=True)
class CryoDRGN2Config(CryoDRGNConfig):
    """Options of cryodrgn2 (cryoDRGN2's proportions at a 128-px box, module docstring)."""

    epochs: int = option(30, "passes over the data (epochs)")
    batch_size: int = option(16, "images per optimiser step, over all DDP processes")
    dec_dim: int = option(256, "width of the decoder MLP")
    heterogeneous: bool = option(False, "add a latent z with an encoder (abinit_het)")
    pretrain_epochs: int = option(1, "epochs on uniformly random poses before the first search")
    search_every: int = option(5, "a search every this many epochs (cryoDRGN's --ps-freq)")
    base_level: int = option(2, "HEALPix level of the search's base SO(3) grid")
    n_levels: int = option(4, "refinement levels of the search")
    keep: int = option(8, "poses kept per image from one level to the next")
    kmax_start: int = option(0, "top Fourier shell of the first search, px (0 = round(3D/32))")
    kmax_end: int = option(0, "top Fourier shell after the ramp, px (0 = D/4)")
    kmax_epochs: int = option(25, "epochs of the frequency ramp")
    max_shift: float = option(10.0, "largest shift searched, px")
    shift_step: float = option(1.5, "step of the shift grid, px")
    search_batch: int = option(64, "images searched per rendering of the map")
    final_search: bool = option(True, "search once more against the final map")
    search_mode: Literal["online", "epoch"] = option("online", "search before each image's step, or per epoch")


def schedule(config: CryoDRGN2Config) -> PoseSearchSchedule:
    """The pose search's schedule from the recipe's options (same names)."""
    names = [f.name for f in dataclasses.fields(PoseSearchSchedule)]
    return PoseSearchSchedule(**{k: getattr(config, k) for k in names})


def fit(particles: Particles, known, run, config: CryoDRGN2Config, device=None, progress: bool = True):
    """Registry entry point of ``cryodrgn2``: ab initio, poses unknown (``heterogeneous`` adds ``z``)."""
    if particles.ctf is None:
        raise InputError(f"{particles.name}: cryodrgn2 needs CTF parameters")
    device = torch.device(device or "cpu")
    torch.manual_seed(config.seed)
    # the model never sees the metadata's poses: they are stripped here
    blind = dataclasses.replace(particles, rotations=None, shifts=None)
    model = CryoDRGN(particles.box_size, particles.pixel_size, len(particles), config,
                     "vae" if config.heterogeneous else "homo")
    search = PoseSearch(schedule(config), blind, model.field,
                        lambda dev: mean_latent(model, blind, dev, search.assign), config.seed, device, progress)
    model.set_norm(hartley_std(blind, config.norm_images, config.seed))
    if is_main():
        write_model_json(run, model, particles, config, "cryodrgn2")
    if config.resume and is_main():
        upgrade_checkpoint(run.path("checkpoint.pt"))
    barrier()
    trainer = train(model, blind, run, config, device, progress, [search])
    if config.final_search:
        search.search(config.epochs, device)
        trainer.save()
    if not is_main():
        return MethodOutputs(pixel_size=particles.pixel_size)
    out = latent_outputs(model, blind, run, config, device, fill=search.assign)
    out.rotations, out.shifts = search.rotations.cpu(), search.shifts.cpu()
    out.metrics["pose_searches"] = search.searches
    return out
