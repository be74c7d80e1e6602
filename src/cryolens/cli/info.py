"""Describe a file: particle metadata (.star, .cs, .mrcs with --poses/--ctf), an MRC map or
stack, or a cryoDRGN pickle.

For particles: number, box, pixel size, which metadata is present (poses, shifts, CTF, other
columns) and the stacks they point at. For a map: shape, pixel size and value statistics.

  cryolens info particles.star
  cryolens info map.mrc
  cryolens info particles.mrcs --poses poses.pkl --ctf ctf.pkl
"""

from __future__ import annotations

import argparse
from pathlib import Path



def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help=".star, .cs, .mrcs, .mrc or .pkl file")
    p.add_argument("--poses", help="cryoDRGN pose pickle (with an .mrcs stack)")
    p.add_argument("--ctf", help="cryoDRGN CTF pickle (with an .mrcs stack)")
    p.add_argument("--max-stacks", type=int, default=10, help="list at most this many stack files (default 10)")
    p.add_argument("--check", action="store_true",
                   help="read every particle image (streamed): fails on NaN / infinite pixels, prints statistics")


def _range(values, unit: str = "", fmt: str = "{:.4g}") -> str:
    import numpy as np

    a = np.asarray(values, dtype=np.float64)
    lo, hi = a.min(), a.max()
    text = fmt.format(lo) if np.isclose(lo, hi, rtol=1e-6, atol=0) else f"{fmt.format(lo)} to {fmt.format(hi)}"
    return f"{text} {unit}".rstrip()


def describe_particles(particles, max_stacks: int = 10) -> list[str]:
    """Lines describing a :class:`~cryolens.io.particles.Particles` or a
    :class:`~cryolens.io.star_table.StarTable` (a STAR file read without torch)."""
    import numpy as np

    from ..io.mrc import stack_info

    p = particles
    d, px = p.box_size, p.pixel_size
    lines = [f"  particles:  {len(p)}",
             f"  box:        {d} px, pixel size {px:.4f} Å ({d * px:.1f} Å across, Nyquist {2 * px:.2f} Å)"]
    has_rotations = getattr(p, "rotations", getattr(p, "angles_deg", None)) is not None
    lines.append(f"  rotations:  {'yes' if has_rotations else 'no'}")
    if p.shifts is not None:
        norm = np.linalg.norm(np.asarray(p.shifts, dtype=np.float64), axis=1)
        lines.append(f"  shifts:     yes (|shift| {_range(norm, 'px', '{:.2f}')})")
    else:
        lines.append("  shifts:     no")
    if p.ctf is not None:
        c = {k: np.asarray(v) for k, v in (p.ctf if isinstance(p.ctf, dict) else p.ctf.as_dict()).items()}
        defocus = np.concatenate([c["defocus_u"], c["defocus_v"]])
        lines.append(f"  CTF:        defocus {_range(defocus, 'Å', '{:.0f}')}, "
                     f"{_range(c['voltage'], 'kV')}, Cs {_range(c['cs'], 'mm')}, "
                     f"Q0 {_range(c['amplitude_contrast'])}, phase shift "
                     f"{_range(np.rad2deg(c['phase_shift']), '°', '{:.1f}')}")
    else:
        lines.append("  CTF:        no")
    if p.extra:
        lines.append(f"  other:      {', '.join(sorted(p.extra))}")
    lines.append(f"  stacks:     {len(p.image_files)}")
    for f in p.image_files[:max_stacks]:
        n, _, _ = stack_info(f)
        lines.append(f"    {f} ({n} images)")
    if len(p.image_files) > max_stacks:
        lines.append(f"    ... and {len(p.image_files) - max_stacks} more")
    return lines


def check_images(particles, batch_size: int = 1024) -> list[str]:
    """Stream every image once (raises on NaN / inf); lines with the pixel statistics."""
    import numpy as np

    from ..io.dataset import iterate_batches

    count, total, total_sq = 0, 0.0, 0.0
    lo, hi = np.inf, -np.inf
    for _, images in iterate_batches(particles, batch_size):
        a = images.double()
        count += a.numel()
        total += float(a.sum())
        total_sq += float((a * a).sum())
        lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    mean = total / count
    std = max(total_sq / count - mean * mean, 0.0) ** 0.5
    return [f"  images:     all {len(particles)} read, finite; min {lo:.4g}, max {hi:.4g}, "
            f"mean {mean:.4g}, std {std:.4g}"]


def describe_volume(path) -> list[str]:
    from ..io.mrc import read_volume

    vol, px = read_volume(path)
    d = vol.shape[0]
    return [f"  shape:      {d} x {d} x {d} (z, y, x)",
            f"  pixel size: {px:.4f} Å ({d * px:.1f} Å across)",
            f"  values:     min {vol.min():.4g}, max {vol.max():.4g}, mean {vol.mean():.4g}, std {vol.std():.4g}"]


def describe_pickle(path) -> list[str]:
    import numpy as np

    from ..errors import InputError
    from ..io.cryodrgn import load_pickle

    obj = load_pickle(path, "pickle")
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        rot, trans = (np.asarray(x) for x in obj)
        return [f"  cryoDRGN pose pickle: {rot.shape[0]} poses (rot {rot.shape}, trans {trans.shape}, "
                f"|trans| {_range(np.linalg.norm(trans, axis=-1), 'of the box', '{:.3f}')})"]
    try:
        a = np.asarray(obj, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{path}: not a cryoDRGN pose or CTF pickle (holds {type(obj).__name__})") from None
    if a.ndim == 3 and a.shape[1:] == (3, 3):
        return [f"  cryoDRGN pose pickle: {a.shape[0]} rotations, no translations"]
    if a.ndim == 2 and a.shape[1] == 9:
        return [f"  cryoDRGN CTF pickle: {a.shape[0]} images, D {_range(a[:, 0], 'px', '{:.0f}')}, "
                f"pixel size {_range(a[:, 1], 'Å')}, defocus {_range(a[:, 2:4], 'Å', '{:.0f}')}, "
                f"{_range(a[:, 5], 'kV')}, Cs {_range(a[:, 6], 'mm')}, Q0 {_range(a[:, 7])}"]
    raise InputError(f"{path}: not a cryoDRGN pose or CTF pickle (holds {type(obj).__name__} {a.shape})")


def main(args: argparse.Namespace) -> int:
    from ..io.files import require_file
    from ..io.mrc import mrc_info

    path = require_file(args.path)
    suffix = path.suffix.lower()
    if suffix == ".mrc" and not (args.poses or args.ctf):
        info = mrc_info(path)
        if len(info.shape) == 3 and len(set(info.shape)) == 1:
            print(f"{path}: MRC map")
            print("\n".join(describe_volume(path)))
            return 0
    if suffix == ".pkl":
        print(f"{path}:")
        print("\n".join(describe_pickle(path)))
        return 0
    if suffix == ".star" and not (args.poses or args.ctf or args.check):
        from ..io.star_table import read_star_table  # numpy only: no torch for a description

        particles = read_star_table(path)
    else:
        from ..io.dataset import read_particles

        particles = read_particles(path, poses=args.poses, ctf=args.ctf)
    kind = {".star": "RELION STAR", ".cs": "cryoSPARC .cs"}.get(suffix, "image stack")
    print(f"{Path(path)}: {kind}")
    print("\n".join(describe_particles(particles, args.max_stacks)))
    if args.check:
        print("\n".join(check_images(particles)))
    return 0
