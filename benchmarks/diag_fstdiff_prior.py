"""FSTdiff's known-pose posterior on a real structure with oracle priors (issue 24): is the over-coverage the
prior's power, its envelope, or the forward model?

Trains ``fstdiff`` (``pose=known``, defaults) on bench_fstdiff's data set (or loads the state this script
saved before for the same set), calibrates under the independent prior, then draws the exact posterior
(:func:`~cryolens.inference.variational_sampling.sample_posterior`, 32 draws) with ``τ²`` the truth's own
shell power ("oracle") and the envelope: none, the truth's mask (floor 0.002), the local power of the
whitened truth (blurred 2 px), the local power of the whitened posterior mean. Per shell 1 … the
back-projection's FSC-0.143 shell: coverage ±1σ / ±2σ, mean error² over mean variance, mean variance over
``τ²``.

  OMP_NUM_THREADS=1 nice -n 5 python benchmarks/diag_fstdiff_prior.py N BOX APIX MODEL [real|truth]

``truth``: images made by the model's own slices of the true map (bench_fstdiff's ``--self truth``), so the
forward model is exact.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_fstdiff as bench  # noqa: E402


def report(tag: str, model, truth: torch.Tensor, tt: torch.Tensor, tau2: torch.Tensor, limit: float) -> None:
    vol = model.volume
    rows = [r for r in bench.calibration(model, truth)["per_shell"] if 1 <= r["shell"] <= limit]
    met = [sum(abs(r[f"in_{m}sigma"] - t) <= 0.05 for r in rows) for m, t in ((1, 0.683), (2, 0.954))]
    err = (torch.view_as_real(tt) - vol.mean.detach().double()).square()
    keep = torch.stack([vol.free, vol.free & ~vol.dc], -1)
    var = vol.logvar.detach().double().exp()[..., None].expand_as(err)
    shell = vol.shells[..., None].expand_as(err)
    ks = range(1, int(limit) + 1)
    ratio = [float(err[keep & (shell == k)].mean() / var[keep & (shell == k)].mean()) for k in ks]
    post = [float(var[keep & (shell == k)].mean() / tau2[k]) for k in ks]
    print(f"{tag:34s} {met[0]:2d}/{met[1]:2d} of {len(rows)} ±1σ | " + " ".join(f"{r['in_1sigma']:.2f}" for r in rows))
    print(f"{'':34s}             ±2σ | " + " ".join(f"{r['in_2sigma']:.2f}" for r in rows))
    print(f"{'':34s}        err²/var | " + " ".join(f"{r:.2f}" for r in ratio))
    print(f"{'':34s}           var/τ² | " + " ".join(f"{r:.2f}" for r in post), flush=True)


def main() -> None:
    from cryolens.imaging.fft import fft3_centered, ifft3_centered
    from cryolens.imaging.grids import gaussian_blur_3d, radial_average
    from cryolens.inference.training import sample_images
    from cryolens.inference.variational_calibrate import calibrate
    from cryolens.inference.variational_sampling import complete, sample_posterior
    from cryolens.inference.variational_setup import build_model
    from cryolens.io.mrc import read_volume
    from cryolens.io.runfolder import RunFolder
    from cryolens.io.star import read_star
    from cryolens.methods import get
    from cryolens.methods.backprojection import backproject
    from cryolens.methods.training import train
    from cryolens.volumes.support_prior import support_envelope
    from cryolens.volumes.variational import trilinear_apodisation

    torch.set_num_threads(1)
    n, box, apix, name = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    mode = sys.argv[5] if len(sys.argv) > 5 else "real"
    ds = bench.ensure(n, box, apix, 0.1, name=name)
    particles = read_star(ds / "particles.star")
    truth = torch.from_numpy(np.asarray(read_volume(ds / "ground_truth" / "volume_000.mrc")[0], dtype=np.float32))
    scratch = tempfile.TemporaryDirectory()
    if mode != "real":
        truth = bench.self_truth(truth, mode)
        sigma = float(np.load(ds / "ground_truth" / "ground_truth.npz")["noise_sigma"])
        particles = bench.well_specified(particles, truth, sigma, Path(scratch.name))
    limit = box * apix / backproject(particles, progress=False).resolution
    cfg = get("fstdiff").config({"pose": "known"})
    model = build_model(particles, cfg, sample_images(particles, cfg.norm_images, cfg.seed), None, None)
    saved = Path(tempfile.gettempdir()) / f"fstdiff_diag_state_{name}_{box}.pt"
    if mode == "real" and saved.is_file():
        model.load_state_dict(torch.load(saved))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            train(model, particles, RunFolder(Path(tmp)), cfg, "cpu", False)
        if mode == "real":
            torch.save(model.state_dict(), saved)
    calibrate(model, particles, None)
    vol, apod = model.volume, trilinear_apodisation(box)
    tt = fft3_centered(truth.double() / apod) / float(model.norm)
    power = radial_average(tt.abs().square()[vol.free] / 2, vol.shells[vol.free], box // 2 + 1)
    tau2 = vol.log_prior_var.detach().double().exp()
    ratio = (tau2 / power)[1:int(limit) + 1]
    print("τ² by moments / the truth's shell power:", " ".join(f"{float(x):.2f}" for x in ratio))
    report("calibrate (independent prior)", model, truth, tt, tau2, limit)
    state = copy.deepcopy(model.state_dict())

    def local_power(grid: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        u2 = ifft3_centered(grid / t2[vol.shells].sqrt()).real.square()
        return gaussian_blur_3d(u2, 2.0) + 1e-3 * float(u2.mean())

    both = vol.free | torch.flip(vol.free, (0, 1, 2))
    for tag, env in (("oracle τ², no envelope", None),
                     ("oracle τ², truth mask f0.002", support_envelope(truth.double() / apod, floor=0.002)),
                     ("oracle τ², truth local power", local_power(tt * both, power)),
                     ("oracle τ², mean local power", local_power(complete(vol.mean.detach().double(), vol), tau2))):
        model.load_state_dict(state)
        out = sample_posterior(model, particles, power, env, 32)
        vol.set_posterior(out.mean, out.var, power)
        report(tag, model, truth, tt, power, limit)


if __name__ == "__main__":
    main()
