"""Where auto-refine's late map loss is *not* (issue 27): per iteration, the map that the posteriors make
against the map that the MAP poses alone make, and the noise model against the true noise.

On one of `bench_refine_many.py`'s cached sets (its first ``--n`` images, SNR 0.1, 20 Å start from the
truth, the recipe's defaults, ``--set key=value`` for a :class:`~cryolens.inference.refine_state.RefineConfig`
option), each iteration prints one JSON line:

- ``post_vs_truth``: FSC-vs-truth 0.5 crossing (Å) of the mean of the two unfiltered half maps, i.e. of the
  posterior-weighted insertion the refinement itself makes;
- ``hard_vs_truth``: the same for a plain back-projection at the iteration's MAP poses and shifts (one pose
  per image: what the map would be without the posterior);
- the median / mean rotation error (global alignment), the median shift error (px), the posterior's RMS angle
  in the local window, significant poses per image, the expected accuracy;
- ``sigma2_ratio``: the iteration's noise power σ² (mean of the halves) over the *true* noise power, every
  fourth shell — the true one is the residual of the images against the ground-truth map projected at the
  true poses and shifts with the same CTF and Fourier conventions as the E-step.

``--temperature T --from-order K``: an experiment, not an option of the recipe — the E-step's likelihood is
divided by ``T`` (σ² × T) at grid orders ≥ K, by wrapping the module's ``posterior_pairs``.

  OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/diag_refine_posterior.py --model 1pwc --n 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_refine_many as many  # noqa: E402


def true_noise_power(p, truth: torch.Tensor) -> torch.Tensor:
    """``(D//2+1,)`` noise power per shell of the images ``p`` against ``truth`` at their true poses (E-step units)."""
    from cryolens.imaging.ctf import ctf_2d
    from cryolens.imaging.fft import fft2_centered
    from cryolens.imaging.shift import phase_shift
    from cryolens.inference.mstep import NoiseStats
    from cryolens.inference.oversampling import Reference
    from cryolens.io.dataset import iterate_batches

    size = p.box_size
    ref, stats = Reference(truth, 2, size // 2, len(p)), NoiseStats(size)
    for idx, images in iterate_batches(p, 64, np.arange(len(p))):
        it = torch.as_tensor(idx)
        y = fft2_centered(images)
        proj = ref.slicer(p.rotations[it].float())
        pred = proj if p.ctf is None else ctf_2d(p.ctf[it], size, p.pixel_size) * proj
        stats.add((phase_shift(y, -p.shifts[it].float()) - pred).abs().square().sum(0), y.shape[0])
    return stats.estimate().double()


def tempered(temperature: float, from_order: int) -> None:
    """Divide the E-step's log-likelihood by ``temperature`` at grid orders ≥ ``from_order`` (module docstring)."""
    from cryolens.inference import autorefine

    plain = autorefine.posterior_pairs

    def wrapped(y, c, s2, ref, stage, prev_r, prev_t, cfg):
        return plain(y, c, s2 * (temperature if stage.order >= from_order else 1.0), ref, stage, prev_r, prev_t, cfg)

    autorefine.posterior_pairs = wrapped


def main() -> None:
    from cryolens.inference.autorefine import auto_refine
    from cryolens.io.dataset import read_particles
    from cryolens.io.mrc import read_volume
    from cryolens.methods.backprojection import backproject
    from cryolens.methods.refine3d import RELION_DEFAULTS, refine_config
    from cryolens.metrics.pose_error import pose_error_summary
    from cryolens.simulate.dataset import read_ground_truth

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="1pwc")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--max-iterations", type=int, default=10)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--from-order", type=int, default=4)
    ap.add_argument("--set", action="append", default=[], help="RefineConfig option key=value (JSON value)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.temperature != 1.0:
        tempered(args.temperature, args.from_order)
    ds, apix = many.ensure_dataset(args.model, 0.1, 5000)
    p = read_particles(ds / "particles.star").subset(np.arange(args.n))
    gt = read_ground_truth(ds)
    truth = torch.from_numpy(np.asarray(read_volume(gt["volume_files"][0])[0], dtype=np.float32))
    true_rot, true_shift = torch.as_tensor(gt["rotations"][:args.n]).float(), p.shifts.clone()
    noise = true_noise_power(p, truth)
    print(json.dumps({"known_pose": many.score(backproject(p, progress=False).volume, true_rot, truth, true_rot,
                                               apix)}), flush=True)
    hard = read_particles(ds / "particles.star").subset(np.arange(args.n))
    p.rotations, p.shifts = None, None
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = refine_config({**RELION_DEFAULTS, "lowpass": 20.0, "max_iterations": args.max_iterations, **overrides})

    def on_iteration(state) -> None:
        h = state.history[-1]
        post = many.score(0.5 * (state.unfiltered[0] + state.unfiltered[1]), state.rotations, truth, true_rot, apix)
        hard.rotations, hard.shifts = state.rotations.clone(), state.shifts.clone()
        err = pose_error_summary(state.rotations.float(), true_rot)
        s2 = 0.5 * (state.sigma2[0].double() + state.sigma2[1].double())
        print(json.dumps({
            "iteration": h["iteration"], "step_deg": round(h["angular_step_deg"], 3),
            "halfmap_A": round(h["resolution_A"], 3), "post_vs_truth": round(post["fsc_truth_05_A"], 3),
            "hard_vs_truth": round(many.score(backproject(hard, progress=False).volume, state.rotations, truth,
                                              true_rot, apix)["fsc_truth_05_A"], 3),
            "median_error_deg": round(err["median_deg"], 3), "mean_error_deg": round(err["mean_deg"], 3),
            "median_shift_error_px": round(float((state.shifts - true_shift).norm(dim=-1).median()), 3),
            "window_rms_deg": h.get("window_rms_deg"), "mean_significant": h.get("mean_significant"),
            "accuracy_deg": h.get("accuracy_deg"), "kept_mass_mean": h.get("kept_mass_mean"),
            "significant_at_cap": h.get("significant_at_cap"), "elapsed_s": round(state.elapsed_s, 1),
            "sigma2_ratio": [round(v, 3) for v in (s2 / noise)[:: 4].tolist()]}), flush=True)

    t0 = time.perf_counter()
    auto_refine(p, truth, config=cfg, progress=False, on_iteration=on_iteration)
    print(json.dumps({"wall_s": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
