"""Side by side with cryoDRGN 4.3.1 on the continuous (hinge) dataset: training speed, peak memory
and accuracy of the heterogeneous VAE (`train_vae` / cryolens `cryodrgn`) and of the homogeneous
neural volume (`train_nn` / cryolens `cryodrgn-homo`), same data, same architecture, same epochs.

Dataset: `continuous_dataset.py` (4E43 hinge, 50 states over 0–25°, N = 10,000, D = 64, 1.5 Å/px,
SNR 0.1, poses and CTF known, no shifts). cryoDRGN runs in its own venv (`CRYOLENS_CRYODRGN`, see
`cryolens.bench.cryodrgn`), cryolens through its CLI in a subprocess; both measured the same way
(`run_measured`: wall clock, the child's own peak RSS and CPU time), one thread each.

Parts (each writes its numbers to its own JSON in the results folder, so parts can run at
different times or at the same time; `score` reads them all):
  cryodrgn-vae / cryodrgn-nn   cryoDRGN train_vae / train_nn
  ours-vae / ours-nn           cryolens train cryodrgn / cryodrgn-homo
  ours-vae-bf16 / ours-nn-bf16 the same with `--set cpu_amp=true` (bfloat16 autocast on the CPU)
  score                        Spearman(PC1 of z, hinge angle); per-image FSC-AUC (CryoBench:
                               `fsc_auc(fsc(map of z_i, ground-truth map of image i))`, mean over
                               --n-eval images drawn once with seed 0); the homogeneous maps' FSC
                               against the middle state's map.
  analyze                      the latent analysis of both VAEs coloured by the hinge angle.

  .venv/bin/python benchmarks/bench_cryodrgn.py cryodrgn-vae cryodrgn-nn ours-vae ours-nn score \
      --epochs 1 --nn-epochs 1 --nn-images 2000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from continuous_dataset import ensure_continuous_dataset, ground_truth_maps  # noqa: E402


def load_average() -> float:
    return os.getloadavg()[0]


def save(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)


def arch(a) -> dict:
    return {"zdim": a.zdim, "enc": f"{a.layers}x{a.dim}", "dec": f"{a.layers}x{a.dim}", "batch_size": a.batch_size}


def run_cryodrgn_part(kind: str, a, ds: Path, work: Path) -> dict:
    from cryolens.bench import cryodrgn as C
    from cryolens.io import read_star

    particles = read_star(ds / "particles.star")
    first = a.nn_images if kind == "nn" else a.vae_images
    if first:
        particles = particles.subset(np.arange(first))
    inp = C.prepare_inputs(particles, work / (("cryodrgn_inputs" if kind == "vae" else "cryodrgn_inputs_nn")
                                              + (f"_first{first}" if first else "")))
    load0 = load_average()
    if kind == "vae":
        r = C.train_vae(inp, work / "cryodrgn_vae", zdim=a.zdim, epochs=a.epochs, enc_layers=a.layers,
                        enc_dim=a.dim, dec_layers=a.layers, dec_dim=a.dim, batch_size=a.batch_size,
                        threads=a.threads)
    else:
        r = C.train_nn(inp, work / "cryodrgn_nn", epochs=a.nn_epochs, layers=a.layers, dim=a.dim,
                       batch_size=a.batch_size, threads=a.threads)
    n = len(particles)
    return {"command": " ".join(r.command), "version": C.cryodrgn_version(), "outdir": str(r.outdir),
            "wall_s": r.wall_s, "cpu_s": r.cpu_s, "peak_rss_mib": r.peak_rss_mib, "epoch_s": r.epoch_s,
            "images_per_s_epochs": r.images_per_s(n), "images_per_s_wall": n * len(r.epoch_s) / r.wall_s,
            "images_per_cpu_s": n * len(r.epoch_s) / r.cpu_s, "load_before": load0, "load_after": load_average(),
            "threads": a.threads, **arch(a)}


def spearman_pc1(z: np.ndarray, values: np.ndarray) -> float:
    from scipy.stats import spearmanr

    from cryolens.analysis.latent import pca

    return abs(float(spearmanr(pca(z).scores[:, 0], values)[0]))


def per_image_fsc_auc(maps: np.ndarray, gt_maps: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(M,)`` FSC-AUC of each decoded map ``(M, D, D, D)`` against the ground-truth map of its image."""
    from cryolens.metrics import fsc, fsc_auc

    d = maps.shape[-1]
    return np.array([fsc_auc(fsc(torch.from_numpy(m), torch.from_numpy(gt_maps[k])), d)
                     for m, k in zip(maps, labels)])


def score(a, ds: Path, work: Path, results: dict) -> dict:
    from cryolens.bench import cryodrgn as C
    from cryolens.metrics import fsc, fsc_auc, resolution_at

    gt_maps, labels, angles, px = ground_truth_maps(ds)
    d = gt_maps.shape[-1]
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(labels), a.n_eval, replace=False))
    out: dict = {"n_eval": int(a.n_eval), "eval_images": pick.tolist()}
    mid = gt_maps[len(gt_maps) // 2]
    if "cryodrgn_vae" in results:
        vdir = Path(results["cryodrgn_vae"]["outdir"])
        ep = a.cryodrgn_epoch
        z = C.read_latents(vdir, ep)
        t0 = time.perf_counter()
        maps = C.read_maps(C.eval_vol(vdir, z[pick], work / "cryodrgn_eval", px, threads=a.threads, epoch=ep))
        auc = per_image_fsc_auc(maps, gt_maps, labels[pick])
        out["cryodrgn_vae"] = {"epoch": "final" if ep is None else ep + 1,
                               "spearman_pc1_hinge": spearman_pc1(z, angles), "fsc_auc_mean": float(auc.mean()),
                               "fsc_auc_std": float(auc.std()), "eval_s": time.perf_counter() - t0}
    if "cryodrgn_nn" in results:
        v = C.read_maps(Path(results["cryodrgn_nn"]["outdir"]) / "reconstruct.mrc")[0]
        curve = fsc(torch.from_numpy(v), torch.from_numpy(mid))
        auc = per_image_fsc_auc(np.broadcast_to(v, (len(pick),) + v.shape), gt_maps, labels[pick])
        out["cryodrgn_nn"] = {"fsc_auc_middle_state": fsc_auc(curve, d),
                              "resolution_0.5_A": resolution_at(curve, 0.5, px, d),
                              "fsc_auc_per_image_mean": float(auc.mean())}
    for key in [k for k in results if k.startswith("ours_vae")]:  # ours_vae, ours_vae_bf16
        from cryolens.methods.cryodrgn import load_trained

        m = load_trained(results[key]["outdir"])
        z = np.asarray(m.latents)
        t0 = time.perf_counter()
        with torch.no_grad():
            maps = np.concatenate([m.decode(torch.as_tensor(z[pick[s:s + 4]], dtype=torch.float32)).cpu().numpy()
                                   for s in range(0, len(pick), 4)])
        auc = per_image_fsc_auc(maps, gt_maps, labels[pick])
        out[key] = {"spearman_pc1_hinge": spearman_pc1(z, angles), "fsc_auc_mean": float(auc.mean()),
                    "fsc_auc_std": float(auc.std()), "eval_s": time.perf_counter() - t0}
    for key in [k for k in results if k.startswith("ours_nn")]:  # ours_nn, ours_nn_bf16
        from cryolens.io.mrc import read_volume

        v = read_volume(results[key]["map"])[0]
        curve = fsc(torch.from_numpy(v), torch.from_numpy(mid))
        auc = per_image_fsc_auc(np.broadcast_to(v, (len(pick),) + v.shape), gt_maps, labels[pick])
        out[key] = {"fsc_auc_middle_state": fsc_auc(curve, d),
                    "resolution_0.5_A": resolution_at(curve, 0.5, px, d),
                    "fsc_auc_per_image_mean": float(auc.mean())}
    return out


def analyze(a, ds: Path, work: Path, results: dict) -> dict:
    """The latent analysis (`analyze_latents`) of both VAEs' latents coloured by the hinge angle:
    cryolens' with its maps (10 k-means centres, 8 maps along PC1, 6 along the graph path) into its
    run folder; cryoDRGN's without maps (plots and numbers only) into `analysis_cryodrgn/`."""
    from cryolens.analysis.latent_run import analyze_latents
    from cryolens.bench import cryodrgn as C

    _, _, angles, px = ground_truth_maps(ds)
    out = {}
    if "cryodrgn_vae" in results:
        z = C.read_latents(results["cryodrgn_vae"]["outdir"])
        s = analyze_latents(z, None, work / "analysis_cryodrgn", px, values={"hinge_angle_deg": angles},
                            n_clusters=10, n_pcs=1, seed=0, title="cryoDRGN 4.3.1 train_vae latents")
        out["cryodrgn_vae"] = {"spearman": s["spearman"], "folder": str(work / "analysis_cryodrgn")}
    for key in [k for k in results if k.startswith("ours_vae")]:  # ours_vae, ours_vae_bf16
        from cryolens.methods.cryodrgn import load_trained

        m = load_trained(results[key]["outdir"])
        s = analyze_latents(m.latents, m.decode, results["ours_vae"]["outdir"], m.pixel_size,
                            values={"hinge_angle_deg": angles}, n_clusters=10, n_pcs=1, n_traversal=8,
                            n_path_maps=6, seed=0)
        out["ours_vae"] = {"spearman": s["spearman"], "folder": results["ours_vae"]["outdir"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="+",
                    choices=["cryodrgn-vae", "cryodrgn-nn", "ours-vae", "ours-nn", "ours-vae-bf16", "ours-nn-bf16",
                             "score", "analyze"])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--states", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=1, help="train_vae / cryodrgn epochs")
    ap.add_argument("--nn-epochs", type=int, default=1, help="train_nn / cryodrgn-homo epochs")
    ap.add_argument("--nn-images", type=int, default=0,
                    help="train_nn / cryodrgn-homo on the first K images only (0: all)")
    ap.add_argument("--vae-images", type=int, default=0,
                    help="train_vae / cryodrgn on the first N images only (speed runs; 0 = all)")
    ap.add_argument("--zdim", type=int, default=8)
    ap.add_argument("--layers", type=int, default=3, help="hidden layers of encoder and decoder")
    ap.add_argument("--dim", type=int, default=256, help="hidden width of encoder and decoder")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-eval", type=int, default=100, help="images for the per-image FSC-AUC")
    ap.add_argument("--methods", default="",
                    help="score / analyze only these (comma-separated: cryodrgn_vae, ours_vae, ...); "
                         "results go to score_<methods>.json, so two can run at once")
    ap.add_argument("--cryodrgn-epoch", type=int, default=None,
                    help="score: cryoDRGN's z and weights saved after this 0-based epoch (z.E.pkl, weights.E.pkl) "
                         "instead of the final ones, e.g. for a run still training")
    ap.add_argument("--results", default=None, help="results folder (default: bench_cryodrgn/ beside the dataset)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ds = ensure_continuous_dataset(n=a.n, n_states=a.states)
    work = ds / "bench_cryodrgn"
    work.mkdir(exist_ok=True)
    res_dir = Path(a.results) if a.results else work
    res_dir.mkdir(parents=True, exist_ok=True)
    for part in a.parts:  # one file per part, so that parts can run at the same time
        key = part.replace("-", "_")
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        if part in ("score", "analyze"):
            results = {p.stem: json.loads(p.read_text()) for p in sorted(res_dir.glob("*.json"))
                       if not p.stem.startswith(("score", "analyze"))}
            if a.methods:
                results = {k: v for k, v in results.items() if k in a.methods.split(",")}
            out = (score if part == "score" else analyze)(a, ds, work, results)
            key = key if not a.methods else f"{key}_{a.methods.replace(',', '-')}"
        elif part.startswith("cryodrgn"):
            out = run_cryodrgn_part(part.split("-")[1], a, ds, work)
        else:
            out = run_ours("cryodrgn" if part.startswith("ours-vae") else "cryodrgn-homo", a, ds, work,
                           bf16=part.endswith("-bf16"))
        out["started"] = started
        save(res_dir / f"{key}.json", out)
        print(json.dumps({key: {k: v for k, v in out.items() if k != "eval_images"}}, indent=1))


def run_ours(recipe: str, a, ds: Path, work: Path, bf16: bool = False) -> dict:
    """``cryolens train RECIPE`` in a subprocess (one thread), measured like cryoDRGN's commands;
    ``bf16``: with ``cpu_amp`` (bfloat16 autocast on the CPU)."""
    from cryolens.bench.cryodrgn import run_measured
    from cryolens.inference.engine import read_log

    vae = recipe == "cryodrgn"
    out = work / (("ours_vae" if vae else "ours_nn") + ("_bf16" if bf16 else ""))
    star = ds / "particles.star"
    first = a.vae_images if vae else a.nn_images
    if first:
        from cryolens.io import read_star, write_star

        star = write_star(work / f"first{first}.star", read_star(star).subset(np.arange(first)))
    cmd = [sys.executable, "-c", "import sys, torch; torch.set_num_threads(1); from cryolens.cli.main import main; "
           "sys.exit(main(sys.argv[1:]))", "train", recipe, str(star), "--out", str(out),
           "--epochs", str(a.epochs if vae else a.nn_epochs), "--batch-size", str(a.batch_size), "--seed", "0",
           "--device", "cpu", "--quiet", "--set", f"dec_layers={a.layers}", "--set", f"dec_dim={a.dim}"]
    if bf16:
        cmd += ["--set", "cpu_amp=true"]
    if vae:
        cmd += ["--zdim", str(a.zdim), "--set", f"enc_layers={a.layers}", "--set", f"enc_dim={a.dim}"]
    if out.exists():
        import shutil

        shutil.rmtree(out)  # a fresh run, not a resume
    load0 = load_average()
    wall, rss, cpu, rc, log = run_measured(cmd, work / f"{out.name}.log", a.threads)
    if rc != 0:
        raise SystemExit(f"cryolens train {recipe} failed ({rc}):\n" + "\n".join(log.splitlines()[-15:]))
    n = int(json.loads((out / "metrics.json").read_text())["n_images"])
    ends = [r for r in read_log(out / "log.jsonl") if r.get("epoch_end")]
    epoch_s = [n / r["images_per_s"] for r in ends]
    return {"command": " ".join(cmd[:1] + ["-c", "'...cli main'"] + cmd[3:]), "outdir": str(out),
            "map": str(out / "map.mrc"), "wall_s": wall, "cpu_s": cpu, "peak_rss_mib": rss, "epoch_s": epoch_s,
            "images_per_s_epochs": n * len(epoch_s) / sum(epoch_s), "images_per_s_wall": n * len(epoch_s) / wall,
            "images_per_cpu_s": n * len(epoch_s) / cpu, "load_before": load0, "load_after": load_average(),
            "threads": a.threads, **arch(a)}


if __name__ == "__main__":
    main()
