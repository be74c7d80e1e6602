"""Fourier shell correlation between two maps, computed as RELION does, and the resolution.

  cryolens fsc half1.mrc half2.mrc                 # half maps: threshold 0.143
  cryolens fsc map.mrc truth.mrc --threshold 0.5   # against a ground truth
  cryolens fsc a.mrc b.mrc --mask mask.mrc --out fsc_run/   # also fsc.png, metrics.json, report.html
"""

from __future__ import annotations

import argparse



def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("map1")
    p.add_argument("map2")
    p.add_argument("--mask", help="mask map (.mrc) applied to both maps")
    p.add_argument("--threshold", type=float, default=0.143, help="FSC threshold (0.143 half maps, 0.5 vs truth)")
    p.add_argument("--out", help="folder for fsc.png, metrics.json and report.html")


def main(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..errors import InputError
    from ..io.mrc import read_volume
    from ..metrics.fsc import fsc, resolution_at

    v1, px1 = read_volume(args.map1)
    v2, px2 = read_volume(args.map2)
    if v1.shape != v2.shape:
        raise InputError(f"{args.map2}: shape {v2.shape} differs from {args.map1}'s {v1.shape}")
    if abs(px1 - px2) > 1e-3 * px1:
        print(f"warning: pixel sizes differ ({px1} vs {px2} Å); using {px1}")
    a, b = torch.from_numpy(v1), torch.from_numpy(v2)
    if args.mask:
        m, _ = read_volume(args.mask)
        if m.shape != v1.shape:
            raise InputError(f"{args.mask}: mask shape {m.shape} differs from the maps' {v1.shape}")
        a, b = a * torch.from_numpy(m), b * torch.from_numpy(m)
    curve = np.asarray(fsc(a, b))
    res = float(resolution_at(curve, args.threshold, px1, v1.shape[0]))
    print(f"resolution at FSC {args.threshold}: {res:.2f} Å")
    print("shell  1/Å      FSC")
    for k, c in enumerate(curve):
        print(f"{k:5d}  {k / (v1.shape[0] * px1):.4f}  {c: .4f}")
    if args.out:
        from ..analysis.plots import plot_fsc
        from ..analysis.report import write_report
        from ..io.runfolder import RunFolder

        run = RunFolder(args.out)
        run.write_config("fsc", {k: v for k, v in vars(args).items() if not k.startswith("_")})
        run.write_metrics({"resolution_A": res, "threshold": args.threshold, "fsc": curve.tolist(),
                           "pixel_size": px1, "box_size": v1.shape[0]})
        plot_fsc({"FSC": curve}, px1, v1.shape[0], run.path("fsc.png"), {str(args.threshold): args.threshold})
        write_report(run.root, f"cryolens fsc — {args.map1} vs {args.map2}")
    return 0
