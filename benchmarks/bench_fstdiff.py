"""Calibration of FSTdiff's q(V) at known poses: the fraction of ground-truth Fourier coefficients inside the
±1σ and ±2σ intervals of q(V), per shell, and the mean map's FSC against the truth next to the known-pose
back-projection's.

Data: 4E43 (bundled model) simulated with ``simulate_dataset`` (CTF, defocus 1–2.5 µm, shifts std 2 px),
``--n`` images of ``--box`` px at ``--apix`` Å/px and SNR ``--snr``, cached under benchmarks/_data/. The
recipe runs with ``pose=known`` (the issue's calibration setting) and the options given by ``--set``.
Coefficients are compared per real degree of freedom (real and imaginary parts of the canonical half-space
inside Nyquist, Friedel mates once) in the model's units: the truth is the centred transform of the
ground-truth map divided by the trilinear apodisation (the grid a trilinear slice model fits; the plain
transform is reported beside it), times the images' scale; ``σ`` is the posterior std of that part.
Measured per q(V): ``sgd`` (as trained) and, for each of ``--envelopes``, the recipe's closed-form
calibration (:func:`~cryolens.inference.variational_calibrate.calibrate`) with that prior envelope, or
with ``PRIOR@K`` the marginals read off ``K`` exact posterior draws under it
(:func:`~cryolens.inference.variational_sampling.calibrate_sampled`). ``--model NAME`` simulates another
bundled structure, ``--chain A`` one chain of it (a 4E43 monomer).
``--self truth|prior|support``: the images are made instead by the model's own slice of the truth or of a
draw of its prior (:func:`self_truth`), same poses, shifts, CTFs and noise.

``--refine DEG``: instead, a pose refinement: every true rotation is perturbed by a random rotation of
DEG degrees about a random axis, the start map is the truth low-passed to ``--start-res`` Å, and the recipe
runs with ``pose=variational`` from those poses (``--search``: from each image's mode searched against the
start map instead, ``start_poses=search``, the metadata's poses unused); reported after one training, read as trained
(``learned``) and after each count in ``--newton`` of Gauss-Newton steps with Laplace spreads
(``laplace_N``): the median rotation error of the mean poses against the truth, its start value, the
Spearman correlation between each image's rotational spread (rlnCryolensRotStdDeg) and its error, and that
correlation's ceiling for these spreads (errors drawn from them: spread/√3 · |N(0, I₃)|). ``--abinit``:
the same from random start poses and a zero map ("start" error: that of random rotations). ``--importance K``
(a diagnostic): also read the spreads as the posterior's second moments about each mean by importance sampling
(:func:`importance_poses`: ``K`` draws per image from the Laplace fit widened 2×), with the weights' median
effective sample size.

  nice -n 10 .venv/bin/python benchmarks/bench_fstdiff.py [--n 1000 --box 32 --apix 3.0 --snr 0.1]
      [--set epochs=20 ...] [--envelopes none,auto,auto@32] [--self prior] [--model 1pwc] [--chain A]
      [--refine 5 --start-res 20 --newton 0,2 | --search --start-res 20 | --abinit] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parent / "_data"


def ensure(n: int, box: int, apix: float, snr: float, seed: int = 0, name: str = "4E43", chain: str = "") -> Path:
    """The cached data set (module docstring); ``chain``: that chain of the model only, centred on its
    centre of mass (``A``: one 4E43 monomer)."""
    from cryolens.io.atomic import read_atoms
    from cryolens.simulate import bundled_model, simulate_dataset, volumes_from_models

    tag = f"{name}_" + (f"chain{chain}_" if chain else "")
    out = DATA / f"fstdiff_{tag}D{box}_apix{apix:g}_n{n}_snr{snr:g}_seed{seed}"
    if not (out / "particles.star").is_file():
        model = read_atoms(bundled_model(name))
        if chain:
            model = model.subset(model.chain_ids == chain)
            model = model.with_coords(model.coords - model.center_of_mass())
        simulate_dataset(out, volumes_from_models([model], box, apix), n, apix, snr, shift_std=2.0, shift_max=5.0,
                         defocus_range=(10000.0, 25000.0), astigmatism=500.0, models=[model], seed=seed,
                         progress=False, overwrite=True)
    return out


def self_truth(truth: torch.Tensor, kind: str, seed: int = 11) -> torch.Tensor:
    """The map ``(D, D, D)`` whose gridding-corrected transform the ``--self`` images are made from: the true
    map (``truth``), or a draw of the model's own prior with the true map's power per shell (per real
    coordinate of ``fft3(truth / apodisation)``) and no envelope (``prior``) or the true map's support
    envelope (``support``, :func:`~cryolens.volumes.support_prior.support_envelope`)."""
    from cryolens.imaging.fft import fft3_centered, ifft3_centered
    from cryolens.imaging.grids import radial_average, shell_index_3d
    from cryolens.volumes.support_prior import support_envelope
    from cryolens.volumes.variational import trilinear_apodisation

    if kind == "truth":
        return truth
    d = truth.shape[-1]
    apod = trilinear_apodisation(d)
    shells = shell_index_3d(d).clamp_max(d // 2)
    power = radial_average(fft3_centered(truth.double() / apod).abs().square() / 2, shells, d // 2 + 1)
    w = support_envelope(truth.double() / apod) if kind == "support" else torch.ones(d, d, d, dtype=torch.float64)
    noise = torch.randn(d, d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grid = fft3_centered(w.sqrt() * noise) * (2 * power[shells] / d**3).sqrt()
    return (ifft3_centered(grid).real * apod).float()


def well_specified(particles, truth: torch.Tensor, noise_sigma: float, folder: Path):
    """The same poses, shifts, CTFs and noise level, the images made by the model's own trilinear slice of
    the gridding-corrected ``fft3(truth / apodisation)`` (``--self``): a data set the model describes
    exactly."""
    from cryolens.imaging.fft import fft3_centered, ifft2_centered
    from cryolens.imaging.forward import shift_and_ctf
    from cryolens.imaging.grids import freq_grid_2d
    from cryolens.io.mrc import write_stack
    from cryolens.io.particles import Particles
    from cryolens.volumes.variational import trilinear_apodisation
    from cryolens.volumes.voxel import sample_fourier

    d = particles.box_size
    grid = fft3_centered(truth.double() / trilinear_apodisation(d))
    plane = torch.cat([freq_grid_2d(d).reshape(-1, 2), torch.zeros(d * d, 1)], 1)
    g = torch.Generator().manual_seed(5)
    images = []
    for s in range(0, len(particles), 200):
        r = particles.rotations[s:s + 200].double()
        f = sample_fourier(grid, torch.einsum("bij,mj->bmi", r, plane.double())).reshape(-1, d, d)
        f = shift_and_ctf(f, particles.shifts[s:s + 200].double(), particles.ctf[s:s + 200], particles.pixel_size)
        img = ifft2_centered(f).real.float()
        images.append(img + noise_sigma * torch.randn(img.shape, generator=g))
    write_stack(folder / "self.mrcs", torch.cat(images).numpy(), particles.pixel_size)
    return Particles(particles.pixel_size, d, [str(folder / "self.mrcs")], np.zeros(len(particles), int),
                     np.arange(len(particles)), particles.rotations, particles.shifts, particles.ctf)



def calibration(model, truth: torch.Tensor, gridding: bool = True) -> dict:
    """Per shell: fraction of true real/imaginary parts within 1σ and 2σ of q(V), and the counts. The truth in
    the model's units: the transform of ``truth`` divided by the trilinear apodisation (``gridding``; the
    grid a trilinear slice model fits is that, not the plain transform), times the images' scale."""
    from cryolens.imaging.fft import fft3_centered
    from cryolens.volumes.variational import trilinear_apodisation

    v = model.volume
    norm = float(model.norm)
    target = truth.double() / (trilinear_apodisation(v.box_size) if gridding else 1.0)
    true = torch.view_as_real(fft3_centered(target))
    mean, sd = v.mean.detach().double() * norm, (0.5 * v.logvar.detach().double()).exp() * norm
    z = (true - mean).abs() / sd[..., None]
    keep = torch.stack([v.free, v.free & ~v.dc], -1)
    shells = v.shells[..., None].expand_as(keep)
    rows = []
    for k in range(v.box_size // 2 + 1):
        m = keep & (shells == k)
        zk = z[m]
        rows.append({"shell": k, "n": int(m.sum()), "in_1sigma": float((zk <= 1).double().mean()),
                     "in_2sigma": float((zk <= 2).double().mean())})
    return {"per_shell": rows}


@torch.no_grad()
def importance_poses(model, particles, device, samples: int = 64,
                     widen: float = 2.0, batch_size: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """Set the pose table's spreads to the posterior's own second moments about each mean, by importance
    sampling (mass-covering, where Laplace's curvature at the mean is local): ``samples`` offsets ``η`` per image
    from ``N(0, widen · H⁻¹)`` (the Laplace fit widened), weighted by ``exp(log p(Y | η) + log p(τ) − log q(η))``
    at the posterior-mean map; the spreads are ``sqrt(Σ_k w_k η_k²)`` per axis (about the mean, so that an
    image whose posterior mass lies off its mean gets a wider spread). Returns per image (STAR order)
    ``rot_var (N, 3)`` rad², ``shift_var (N, 2)`` px² and ``ess (N,)`` (the effective sample size)."""
    from cryolens.imaging.fft import fft2_centered
    from cryolens.inference.likelihood import shell_weights
    from cryolens.inference.variational_laplace import _predict, laplace_batch
    from cryolens.io.dataset import iterate_batches

    table, n, k = model.poses, len(particles), int(samples)
    grid = model.volume.mean_grid().detach()
    d = model.volume.box_size
    w_f = shell_weights(model.log_noise.detach().exp().to(model.plane.dtype), d, model.k_max)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    out = {"rot_var": torch.zeros(n, 3, dtype=torch.float64), "shift_var": torch.zeros(n, 2, dtype=torch.float64),
           "ess": torch.zeros(n, dtype=torch.float64)}
    for idx, images in iterate_batches(particles, batch_size):
        it = torch.as_tensor(idx)
        batch = {"index": it.to(device), "image": images.to(device)}
        if particles.ctf is not None:
            batch["ctf"] = particles.ctf[it].to(device)
        h, _, rot, shifts = laplace_batch(model, grid, batch)
        b = len(rot)
        free = 5 if table.log_shift_std is not None else 3
        cov = widen * torch.linalg.inv(h[:, :free, :free] + 1e-9 * torch.eye(free, dtype=h.dtype, device=h.device))
        chol = torch.linalg.cholesky(cov)
        z = torch.randn(b, k, free, generator=gen, device=device, dtype=torch.float64)
        eta = torch.einsum("bij,bkj->bki", chol, z)  # (B, K, free)
        log_q = -0.5 * z.square().sum(-1)  # up to a per-image constant, which the weights' normalisation drops
        y = fft2_centered(batch["image"].to(model.plane.dtype) / model.norm)
        log_w = torch.empty(b, k, dtype=torch.float64, device=device)
        for j in range(k):
            e = torch.zeros(b, 5, dtype=model.plane.dtype, device=device)
            e[:, :free] = eta[:, j].to(e.dtype)
            res = y - _predict(model, grid, rot, shifts, e, batch)
            log_w[:, j] = -(w_f * res.abs().square()).sum((-2, -1)).double()
        if free == 5:  # the shift prior N(0, s₀²) about zero, at the offset shift
            log_w = log_w - 0.5 * ((shifts.double()[:, None] + eta[..., 3:]) / model.shift_prior_std).square().sum(-1)
        w = torch.softmax(log_w - log_q, dim=1)
        second = torch.einsum("bk,bki->bi", w, eta.square())
        out["rot_var"][it] = second[:, :3].cpu()
        if free == 5:
            out["shift_var"][it] = second[:, 3:].cpu()
        out["ess"][it] = (1 / w.square().sum(1)).cpu()
    table.log_rot_std.copy_((0.5 * out["rot_var"].clamp_min(1e-12).log()).to(table.log_rot_std))
    if table.log_shift_std is not None:
        table.log_shift_std.copy_((0.5 * out["shift_var"].clamp_min(1e-12).log()).to(table.log_shift_std))
    return out


def refinement(particles, truth: torch.Tensor, deg: float | None, start_res: float, sets: list[str],
               newton: list[int], save_map: str | None = None, importance: int = 0) -> dict:
    """The ``--refine`` measurement (module docstring); ``deg`` None: ``--abinit`` (random start poses,
    zero start map). The recipe's own steps (:mod:`cryolens.methods.fstdiff`) with one training, then read
    three ways: the spreads as trained (``learned``), and after each count of ``newton`` Gauss-Newton steps
    (cumulative) the Laplace spreads (``laplace_N``)."""
    from scipy.stats import spearmanr

    from cryolens.imaging.grids import lowpass_volume
    from cryolens.imaging.rotations import rotvec_to_matrix
    from cryolens.inference.training import sample_images
    from cryolens.inference.variational_laplace import laplace_poses
    from cryolens.inference.variational_setup import build_model, pose_strategies, pose_summaries
    from cryolens.io.mrc import write_volume
    from cryolens.io.runfolder import RunFolder
    from cryolens.methods import get
    from cryolens.methods.fstdiff import start as fstdiff_start
    from cryolens.methods.training import train
    from cryolens.metrics.fsc import fsc, resolution_at
    from cryolens.metrics.pose_error import rotation_errors

    g = torch.Generator().manual_seed(1)
    axis = torch.randn(len(particles), 3, generator=g)
    kick = rotvec_to_matrix(axis / axis.norm(dim=-1, keepdim=True) * np.radians(deg or 0.0))
    start = dataclasses.replace(particles, rotations=particles.rotations @ kick)
    with tempfile.TemporaryDirectory() as tmp:
        write_volume(Path(tmp) / "start.mrc", lowpass_volume(truth, start_res, particles.pixel_size).numpy(),
                     particles.pixel_size)
        begin = {"init_map": str(Path(tmp) / "start.mrc")} if deg is not None else {"start_poses": "random"}
        cfg = get("fstdiff").config({"pose": "variational", **begin, **dict(s.split("=", 1) for s in sets)})
        torch.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        start_map, data, rot = fstdiff_start(start, cfg)
        start_s = time.perf_counter() - t0
        model = build_model(data, cfg, sample_images(start, cfg.norm_images, cfg.seed), start_map, rot)
        t0 = time.perf_counter()
        train(model, data, RunFolder(Path(tmp) / "run"), cfg, "cpu", False, pose_strategies(cfg))
        elapsed = time.perf_counter() - t0
    mean_map = model.volume.render()[0].detach() * float(model.norm)
    d, px = particles.box_size, particles.pixel_size
    res = {"options": dataclasses.asdict(cfg), "fit_s": elapsed, "epoch_s": elapsed / cfg.epochs,
           "start_s": start_s, "start_median_error_deg": float(np.median(rotation_errors(rot, particles.rotations))),
           "fsc05_mean_vs_truth_A": resolution_at(fsc(mean_map, truth), 0.5, px, d)}
    if save_map:
        write_volume(Path(save_map), mean_map.numpy(), px)

    def read(tag: str, seconds: float = 0.0) -> None:
        poses = pose_summaries(model, data, "cpu")
        err, spread = rotation_errors(poses.rotations, particles.rotations), poses.rot_spread_deg
        # the Spearman a calibrated spread could reach: errors drawn as spread/√3 · |N(0, I₃)|
        draws = np.random.default_rng(0).standard_normal((20, len(spread), 3))
        ceiling = [spearmanr(spread, spread * np.linalg.norm(z, axis=-1))[0] for z in draws]
        res[tag] = {"median_error_deg": float(np.median(err)), "mean_error_deg": float(np.mean(err)),
                    "median_rot_spread_deg": float(np.median(spread)), "seconds": seconds,
                    "spread_p10_p90_deg": np.percentile(spread, [10, 90]).tolist(),
                    "spearman_spread_vs_error": float(spearmanr(spread, err)[0]),
                    "error_histogram_deg": {f"{lo}-{hi}": float(np.mean((err >= lo) & (err < hi))) for lo, hi in
                                            ((0, 10), (10, 30), (30, 90), (90, 150), (150, 181))},
                    "spearman_ceiling": float(np.mean(ceiling))}
        print(tag, json.dumps(res[tag]), flush=True)

    read("learned")
    done = 0
    for k in newton:
        t1 = time.perf_counter()
        laplace_poses(model, data, "cpu", newton=k - done)
        read(f"laplace_{k}", time.perf_counter() - t1)
        done = k
    if importance:
        t1 = time.perf_counter()
        ess = importance_poses(model, data, "cpu", samples=importance)["ess"]
        res["importance_ess_median"] = float(ess.median())
        read("importance", time.perf_counter() - t1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--box", type=int, default=32)
    ap.add_argument("--apix", type=float, default=3.0)
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--set", action="append", default=[], help="recipe option key=value")
    ap.add_argument("--refine", type=float, default=0.0, help="pose refinement from poses perturbed by DEG")
    ap.add_argument("--search", action="store_true", help="refinement from the start map alone: start_poses=search")
    ap.add_argument("--abinit", action="store_true", help="ab initio: random start poses, zero start map")
    ap.add_argument("--start-res", type=float, default=20.0, help="low-pass of the refinement's start map, Å")
    ap.add_argument("--self", choices=["truth", "prior", "support"],
                    help="images made by the model's own slice of the truth or of a prior draw (self_truth)")
    ap.add_argument("--envelopes", default="none,auto",
                    help="calibrate's priors to measure (comma-separated; PRIOR@K: marginals from K exact draws)")
    ap.add_argument("--newton", default="0,3", help="--refine: Gauss-Newton step counts to read (cumulative)")
    ap.add_argument("--chain", default="", help="simulate this chain only (A: a 4E43 monomer)")
    ap.add_argument("--model", default="4E43", help="bundled atomic model to simulate (cryolens.simulate)")
    ap.add_argument("--save-map", help="--refine/--abinit: write the trained mean map (MRC) here")
    ap.add_argument("--importance", type=int, default=0,
                    help="--refine/--search: also read the spreads by importance sampling with K draws per image")
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    from cryolens.inference.training import sample_images
    from cryolens.inference.variational_calibrate import calibrate
    from cryolens.inference.variational_sampling import calibrate_sampled, mean_envelope
    from cryolens.inference.variational_setup import build_model
    from cryolens.io.mrc import read_volume
    from cryolens.io.runfolder import RunFolder
    from cryolens.io.star import read_star
    from cryolens.methods import get
    from cryolens.methods.backprojection import backproject
    from cryolens.methods.training import train
    from cryolens.metrics.fsc import fsc, resolution_at

    ds = ensure(a.n, a.box, a.apix, a.snr, name=a.model, chain=a.chain)
    particles = read_star(ds / "particles.star")
    truth = torch.from_numpy(np.asarray(read_volume(ds / "ground_truth" / "volume_000.mrc")[0], dtype=np.float32))
    if a.search:
        a.set.append("start_poses=search")
    if a.refine > 0 or a.abinit or a.search:
        deg = None if a.abinit else a.refine
        newton = [int(k) for k in a.newton.split(",")]
        res = {"dataset": ds.name, **refinement(particles, truth, deg, a.start_res, a.set, newton, a.save_map,
                                               a.importance)}
        print(json.dumps({k: v for k, v in res.items() if k != "options"}, indent=1))
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1))
        return
    cfg = get("fstdiff").config({"pose": "known", **dict(s.split("=", 1) for s in a.set)})
    scratch = tempfile.TemporaryDirectory()
    if a.self:
        truth = self_truth(truth, a.self)
        sigma = float(np.load(ds / "ground_truth" / "ground_truth.npz")["noise_sigma"])
        particles = well_specified(particles, truth, sigma, Path(scratch.name))
    t0 = time.perf_counter()
    model = build_model(particles, cfg, sample_images(particles, cfg.norm_images, cfg.seed), None, None)
    with tempfile.TemporaryDirectory() as tmp:  # the recipe's own path (methods/fstdiff.py), model kept
        train(model, particles, RunFolder(Path(tmp)), cfg, "cpu", False)
    elapsed = time.perf_counter() - t0
    bp = backproject(particles, progress=False)
    d, px = particles.box_size, particles.pixel_size
    res = {"dataset": ds.name + (f"_self_{a.self}" if a.self else ""), "options": dataclasses.asdict(cfg),
           "fit_s": elapsed,
           "epoch_s": elapsed / cfg.epochs,
           "fsc05_backprojection_vs_truth_A": resolution_at(fsc(bp.volume, truth), 0.5, px, d),
           "halfmap_0143_backprojection_A": bp.resolution, "fstdiff": {}}
    state = copy.deepcopy(model.state_dict())
    for mode in ["sgd"] + ([e for e in a.envelopes.split(",") if e] if cfg.calibrate else []):
        model.load_state_dict(state)
        t1, iterations = time.perf_counter(), []
        prior, _, draws = mode.partition("@")
        env = (lambda: mean_envelope(model, prior, cfg.envelope_floor))  # noqa: E731
        if mode != "sgd" and draws:  # τ² and the mean under the independent prior, then exact draws
            calibrate(model, particles, None)
            iterations = calibrate_sampled(model, particles, env(), int(draws)).iterations
        elif mode != "sgd":
            calibrate(model, particles, env())
        post, prior = model.volume.shell_std()
        res["fstdiff"][mode] = {"calibrate_s": time.perf_counter() - t1, "cg_iterations": iterations,
                                "fsc05_mean_vs_truth_A": resolution_at(fsc(model.volume.render()[0] * float(model.norm),
                                                                           truth), 0.5, px, d),
                                "plain_truth": calibration(model, truth, gridding=False)["per_shell"],
                                **calibration(model, truth), "posterior_std_per_shell": (post * model.norm).tolist(),
                                "prior_std_per_shell": (prior * model.norm).tolist()}
    report(res, d * px / bp.resolution)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


def report(res: dict, limit: float) -> None:
    """Print the summary and, per q(V) (``sgd``: as trained; else calibrated with that envelope), the
    coverage per shell (``*``: shells 1 … the back-projection's FSC-0.143 shell ``limit``)."""
    print(json.dumps({k: v for k, v in res.items() if k not in ("options", "fstdiff")}, indent=1))
    for mode, r in res["fstdiff"].items():
        rows = [row for row in r["per_shell"] if 1 <= row["shell"] <= limit]
        met = [sum(abs(row[f"in_{m}sigma"] - t) <= 0.05 for row in rows) for m, t in ((1, 0.683), (2, 0.954))]
        print(f"-- {mode}: calibrate {r['calibrate_s']:.1f} s, "
              f"mean map FSC 0.5 vs truth {r['fsc05_mean_vs_truth_A']:.2f} A, shells within 0.05: "
              f"{met[0]} / {met[1]} of {len(rows)}, CG iterations {r['cg_iterations'][:3]}…")
        for row, plain in zip(r["per_shell"], r["plain_truth"]):
            mark = "*" if 1 <= row["shell"] <= limit else " "
            print(f"{mark}shell {row['shell']:3d}  n {row['n']:6d}  in 1σ {row['in_1sigma']:.3f}  "
                  f"in 2σ {row['in_2sigma']:.3f}   (plain truth: {plain['in_1sigma']:.3f} {plain['in_2sigma']:.3f})")


if __name__ == "__main__":
    main()
