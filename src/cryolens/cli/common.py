"""Small helpers shared by the command modules (device choice, argument checks)."""

from __future__ import annotations

import torch

from ..errors import InputError


def pick_device(name: str | None) -> torch.device:
    """``name`` if given, else CUDA when a GPU is seen, else the CPU."""
    if name:
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {name}: no CUDA device is available")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def require_reference(volume: torch.Tensor, box: int, path: str) -> torch.Tensor:
    """Check a reference map's box matches the particles'."""
    if tuple(volume.shape) != (box, box, box):
        raise InputError(f"{path}: reference map is {tuple(volume.shape)}, particles need ({box}, {box}, {box})")
    return volume.float()


def config_value(config, name: str, default=None):
    """Option ``name`` of a recipe config (a :class:`~cryolens.methods.config.RecipeConfig`, or a plain
    dict while recipes are converted)."""
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def config_dict(config) -> dict:
    """A recipe config as a plain dict (for ``config.json``)."""
    from ..methods.config import as_dict

    return dict(config) if isinstance(config, dict) else as_dict(config)


def fit_and_write(command: str, recipe, particles, known, config, args, device, reference=None,
                  metrics: dict | None = None, title: str | None = None):
    """The body of a recipe command: ``config.json``, ``recipe.fit``, then the one writer
    (:func:`cryolens.analysis.writer.write_run`) into ``args.out``. Returns ``(outputs, metrics)``.
    Under ``torchrun`` every rank fits (the EM core shares the work) and rank 0 alone writes; the
    other ranks get ``None`` metrics (the command then prints nothing).

    Unless the config resumes, a ``metrics.json`` left by an earlier run in the folder is removed first
    (what ``fit`` writes while it runs is kept under the writer's numbers)."""
    from ..analysis.writer import title_for, write_run
    from ..inference.distributed import barrier, finish_distributed, init_distributed, is_main
    from ..io.runfolder import RunFolder

    device = init_distributed(device) or device  # under torchrun: join the process group (no-op otherwise)
    run = RunFolder(args.out)
    resume = bool(config_value(config, "resume", False))
    if not resume and is_main():
        run.path("metrics.json").unlink(missing_ok=True)
        fixed = {k: v for k, v in vars(args).items() if not k.startswith(("_", "opt__")) and k != "set"}
        run.write_config(command, {**fixed, "recipe": recipe.name, "options": config_dict(config)})
    barrier()
    main = is_main()
    try:
        out = recipe.fit(particles, known, run, config, device, not args.quiet and main)
        quick = bool(getattr(args, "no_report", False))
        m = (write_run(out, particles, run, recipe, reference, metrics=metrics, keep_existing=True,
                       title=title or title_for(command, recipe, args.input), report=not quick, plots=not quick)
             if main else None)
    finally:
        finish_distributed()
    return out, m
