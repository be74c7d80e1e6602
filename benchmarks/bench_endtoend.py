"""End-to-end acceptance: simulate from the bundled 4E43 model, reconstruct with cryolens and with
relion_reconstruct --ctf from the same STAR file, compare both maps with the ground truth.

Dataset (cached under benchmarks/_data/, made once by `cryolens.simulate.simulate_dataset`):
4E43.pdb → D = 64, 1.5 Å/px map; N = 5,000 images, uniform poses, Gaussian shifts (std 2 px,
at most 5 px), CTF with mean defocus uniform in 1.0–2.5 µm (astigmatism ≤ 500 Å, 300 kV,
Cs 2.7 mm, Q0 0.1), white noise at SNR 0.1.

Reconstructions (same run, one after the other, pad 2 for both):
  cryolens  — `read_star` + `cryolens.methods.backprojection.backproject` (the function the
              `cryolens backproject` command calls), full map from both half-sets;
  RELION    — `relion_reconstruct --i particles.star --pad 2 --ctf` (RELION 3.1.3, defaults
              otherwise; one process — it has no threads option), the whole set.
Reports: FSC of each map against the ground-truth map and its 0.5 resolution (Å); the FSC between
the two maps and its minimum over shells 1 … 0.8 × Nyquist (acceptance: ≥ 0.9); wall-clock and
CPU time of each and the ratio t_cryolens / t_relion (goal ≤ 0.5).
Also reported "masked": both maps multiplied by the same soft sphere (radius D/2, 3 px raised-cosine
edge) before the FSCs. relion_reconstruct applies such a mask to its own output
(`softMaskOutsideMap(vol_out)` in BackProjector::reconstruct, default radius D/2, 3 px edge);
without it, the noise the gridding correction leaves in the box corners lowers the unmasked FSC
(cryolens masks its maps the same way since commit bfc630c).

  .venv/bin/python benchmarks/bench_endtoend.py [--threads 2] [--n 5000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"


def dataset_dir(n: int, box: int, apix: float, snr: float, seed: int) -> Path:
    return DATA / f"4E43_D{box}_apix{apix:g}_n{n}_snr{snr:g}_seed{seed}"


def ensure_dataset(n: int = 5000, box: int = 64, apix: float = 1.5, snr: float = 0.1, seed: int = 0,
                   shift_std: float = 2.0, shift_max: float = 5.0) -> Path:
    """The simulated dataset folder (particles.star/.mrcs, ground_truth/), made on first use."""
    from cryolens.io.atomic import read_atoms
    from cryolens.simulate import bundled_model, simulate_dataset, volumes_from_models

    out = dataset_dir(n, box, apix, snr, seed)
    if (out / "particles.star").is_file():
        return out
    t0 = time.perf_counter()
    model = read_atoms(bundled_model("4E43"))
    vol = volumes_from_models([model], box, apix)
    simulate_dataset(out, vol, n, apix, snr, shift_std=shift_std, shift_max=shift_max,
                     defocus_range=(10000.0, 25000.0), astigmatism=500.0, models=[model], seed=seed,
                     progress=False, overwrite=True)
    print(f"simulated {out} in {time.perf_counter() - t0:.1f} s")
    return out


def soft_sphere(d: int, radius: float | None = None, edge: float = 3.0) -> np.ndarray:
    """``(D, D, D)`` float32 mask: 1 inside ``radius`` (default D/2) px of the centre voxel, raised
    cosine to 0 over ``edge`` px (RELION's ``softMaskOutsideMap`` shape, without its background fill)."""
    radius = d / 2 if radius is None else radius
    c = np.arange(d) - d // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    m = 0.5 + 0.5 * np.cos(np.pi * np.clip((r - radius) / edge, 0, 1))
    return m.astype(np.float32)


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def time_cryolens(star: Path, pad: int = 2, batch_size: int = 256):
    """(result, wall s, CPU s) of read_star + backproject in this process."""
    from cryolens.io.star import read_star
    from cryolens.methods.backprojection import backproject

    c0, t0 = _self_cpu(), time.perf_counter()
    particles = read_star(star)
    result = backproject(particles, pad=pad, batch_size=batch_size, progress=False)
    return result, time.perf_counter() - t0, _self_cpu() - c0


def time_relion(star: Path, out_mrc: Path, pad: int = 2, ctf: bool = True):
    """(map, wall s, CPU s) of relion_reconstruct run in the STAR's folder (one process)."""
    from cryolens.bench.relion import reconstruct_star

    c0, t0 = _child_cpu(), time.perf_counter()
    vol = reconstruct_star(star.name, star.parent, ctf=ctf, pad=pad, output=str(out_mrc))
    return vol, time.perf_counter() - t0, _child_cpu() - c0


def load_average() -> str:
    """The machine's 1/5/15-minute load averages (the machine may be shared)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def relion_version() -> str:
    try:
        out = subprocess.run(["relion_reconstruct", "--version"], capture_output=True, text=True, timeout=30)
        return " ".join((out.stdout + out.stderr).split())[:60]
    except OSError:
        return "not found"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--apix", type=float, default=1.5)
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for cryolens (RELION: one process)")
    ap.add_argument("--json", help="also write the numbers here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from cryolens.io.mrc import read_volume
    from cryolens.metrics.fsc import fsc, resolution_at

    ds = ensure_dataset(a.n, a.box, a.apix, a.snr, a.seed)
    star = ds / "particles.star"
    gt, _ = read_volume(ds / "ground_truth" / "volume_000.mrc")
    info = json.loads((ds / "ground_truth" / "info.json").read_text())
    d, px = a.box, a.apix
    upto = int(0.8 * d / 2)

    load_before = load_average()
    ours, t_ours, c_ours = time_cryolens(star)
    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp:
        ref, t_rel, c_rel = time_relion(star, Path(tmp) / "relion_full.mrc")

    ours_v = ours.volume.numpy()
    fsc_ours = fsc(ours_v, gt)
    fsc_rel = fsc(ref, gt)
    fsc_between = fsc(ours_v, ref)
    res_ours = resolution_at(fsc_ours, 0.5, px, d)
    res_rel = resolution_at(fsc_rel, 0.5, px, d)
    k_min = 1 + int(np.argmin(fsc_between[1:upto + 1]))
    mask = soft_sphere(d)
    m_ours, m_rel = fsc(ours_v * mask, gt), fsc(ref * mask, gt)
    m_between = fsc(ours_v * mask, ref * mask)
    out = {
        "dataset": str(ds.relative_to(HERE.parent)), "n_images": a.n, "box": d, "pixel_size": px, "snr": a.snr,
        "realised_snr": info.get("realised_snr"), "threads_cryolens": a.threads,
        "relion": relion_version(), "torch": torch.__version__, "load_before": load_before,
        "load_after": load_average(),
        "time_cryolens_s": t_ours, "cpu_cryolens_s": c_ours, "time_relion_s": t_rel, "cpu_relion_s": c_rel,
        "ratio_wall": t_ours / t_rel, "ratio_cpu": c_ours / c_rel,
        "res_gt_05_cryolens_A": res_ours, "res_gt_05_relion_A": res_rel,
        "res_halfmap_0143_cryolens_A": ours.resolution,
        "fsc_between_min_upto_0.8nyq": float(fsc_between[1:upto + 1].min()), "fsc_between_argmin_shell": k_min,
        "upto_shell": upto, "nyquist_shell": d // 2,
        "masked_res_gt_05_cryolens_A": resolution_at(m_ours, 0.5, px, d),
        "masked_res_gt_05_relion_A": resolution_at(m_rel, 0.5, px, d),
        "masked_fsc_between_min_upto_0.8nyq": float(m_between[1:upto + 1].min()),
        "fsc_cryolens_vs_gt": fsc_ours.tolist(), "fsc_relion_vs_gt": fsc_rel.tolist(),
        "fsc_between": fsc_between.tolist(), "masked_fsc_cryolens_vs_gt": m_ours.tolist(),
        "masked_fsc_relion_vs_gt": m_rel.tolist(), "masked_fsc_between": m_between.tolist(),
    }
    print(f"dataset {out['dataset']}: N={a.n}, D={d}, {px} Å/px, SNR {a.snr} (realised {out['realised_snr']:.4g})")
    print(f"torch {torch.__version__}, {a.threads} threads; {out['relion']}; load average before "
          f"{out['load_before']}, after {out['load_after']}")
    print("| map | FSC=0.5 vs GT (Å), as output | same soft sphere on both (Å) | wall (s) | CPU (s) |")
    print("|---|---|---|---|---|")
    print(f"| cryolens backproject | {res_ours:.2f} | {out['masked_res_gt_05_cryolens_A']:.2f} | {t_ours:.1f} |"
          f" {c_ours:.1f} |")
    print(f"| relion_reconstruct --ctf | {res_rel:.2f} | {out['masked_res_gt_05_relion_A']:.2f} | {t_rel:.1f} |"
          f" {c_rel:.1f} |")
    print(f"ratio cryolens / RELION: wall {out['ratio_wall']:.2f}, CPU {out['ratio_cpu']:.2f}")
    print(f"cryolens half-map FSC=0.143: {ours.resolution:.2f} Å")
    print(f"FSC(cryolens, RELION): min over shells 1..{upto} (0.8 × Nyquist) = "
          f"{out['fsc_between_min_upto_0.8nyq']:.4f} at shell {k_min}; at Nyquist {fsc_between[-1]:.4f}; "
          f"masked: {out['masked_fsc_between_min_upto_0.8nyq']:.4f}")
    print("shell | FSC(ours,GT) FSC(RELION,GT) FSC(ours,RELION) | masked: (ours,GT) (RELION,GT) (ours,RELION)")
    for k in range(1, d // 2 + 1):
        print(f"{k:5d} | {fsc_ours[k]:12.4f} {fsc_rel[k]:14.4f} {fsc_between[k]:16.4f} |"
              f" {m_ours[k]:17.4f} {m_rel[k]:11.4f} {m_between[k]:14.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
