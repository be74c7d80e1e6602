"""One training step of the cryoDRGN VAE, cryolens against cryoDRGN 4.3.1, against the matrix-product floor
(issue 29, the training-speed line): how much of a step is the matrix products the architecture requires,
and how fast this CPU runs them.

Each side runs in its own process (cryoDRGN in its venv, ``CRYOLENS_CRYODRGN``), one thread, on the same
synthetic batches (D = 64 images of noise, uniform random poses, CTF with defocus 1.0–2.5 µm: the speed of a
step does not depend on the pixel values): ``--warm`` steps, then ``--steps`` timed steps (forward, backward
and Adam, CPU time), then a ``torch.profiler`` pass of 3 steps split into matrix products (mm, addmm, bmm,
baddbmm) and the rest. Sides alternate ``--rounds`` times; medians. Each worker also times
``(B·M) × 256 @ 256 × 256`` float32 products (``sgemm``), the shape of the decoder's hidden layers, in the
same process: the practical ceiling of this CPU for the step's arithmetic.

Required arithmetic per step (multiply-adds × 2), ``R = B × M`` decoder rows (``M`` points per image: the
origin and the Hartley half inside the Nyquist circle, 1 + n_half = 1,603 for us and 1,604 for cryoDRGN at
D = 64), ``E`` encoding features (195 ours: 192 sin/cos + 3 coordinates; 192 cryoDRGN's), ``W`` width,
``L`` hidden layers, decoder forward ``R (E W + L W² + 2 W)``, the same again for the weight gradients,
and the input gradients of all layers but the first (``R (L W² + 2 W)``); cryoDRGN (and cryolens before
issue 29) also forms the first layer's input gradient ``R (E + zdim) W`` because ``z`` is concatenated to
every point. The encoder (``B × (P W + L W² + 2 zdim W)``, ×3) is under 1 % and counted too.

  export CRYOLENS_CRYODRGN=$HOME/.cache/cryolens/cryodrgn-venv OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
  nice -n 10 /work/main/.venv/bin/python benchmarks/bench_drgn_step.py --src src --base-src /tmp/base_src \
      --rounds 3 --out /tmp/drgn_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def required_gflop(b: int, m: int, enc: int, zdim: int, width: int, layers: int, pixels: int,
                   concatenated: bool) -> float:
    """GFLOP of the matrix products of one step (module docstring); ``concatenated``: z concatenated to
    every point, so the first layer's input gradient is formed as well."""
    r = b * m
    first = r * (enc + zdim) * width if concatenated else r * enc * width + b * zdim * width
    fwd = first + r * (layers * width * width + 2 * width)
    back_inputs = r * (layers * width * width + 2 * width) + (r * (enc + zdim) * width if concatenated else 0)
    encoder = 3 * b * (pixels * width + layers * width * width + 2 * zdim * width)
    return 2 * (2 * fwd + back_inputs + encoder) / 1e9


def sgemm_gflops(rows: int, width: int, reps: int = 10) -> float:
    a, w = torch.randn(rows, width), torch.randn(width, width)
    for _ in range(2):
        a @ w
    times = []
    for _ in range(reps):
        t = time.process_time()
        a @ w
        times.append(time.process_time() - t)
    return 2 * rows * width * width / statistics.median(times) / 1e9


def time_steps(step, batches: list, warm: int, steps: int) -> tuple[float, float]:
    """``(median CPU s per step, matmul share of the profiled CPU time)``."""
    from torch.profiler import ProfilerActivity, profile

    for i in range(warm):
        step(batches[i % len(batches)])
    times = []
    for i in range(steps):
        t = time.process_time()
        step(batches[i % len(batches)])
        times.append(time.process_time() - t)
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for i in range(3):
            step(batches[i % len(batches)])
    ev = p.key_averages()
    total = sum(e.self_cpu_time_total for e in ev)
    mat = sum(e.self_cpu_time_total for e in ev if e.key in MATMUL)
    return statistics.median(times), mat / total


def ours(a) -> dict:
    from types import SimpleNamespace

    from cryolens.imaging.ctf import CTFParams
    from cryolens.imaging.rotations import random_rotations
    from cryolens.inference.latent_model import build_model

    cfg = SimpleNamespace(zdim=8, dec_layers=a.layers, dec_dim=a.width, pe="gaussian", pe_dim=0, feat_sigma=0.5,
                          domain="fourier", seed=0, beta=None, z_lr=1e-2, encoder="mlp", enc_layers=a.layers,
                          enc_dim=a.width)
    model = build_model(a.box, 1.5, 100, cfg, "vae")
    try:  # the engine's optimizer where the code has one (issue 29: the fused CPU Adam)
        from cryolens.inference.engine import TrainConfig, make_optimizer
        opt = make_optimizer([{"params": list(model.parameters())}], TrainConfig(lr=1e-4), torch.device("cpu"))
    except ImportError:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batches = [{"index": torch.arange(a.batch), "image": torch.randn(a.batch, a.box, a.box, generator=g),
                "shift": torch.zeros(a.batch, 2), "rotation": random_rotations(a.batch, g),
                "ctf": CTFParams.create(torch.rand(a.batch, generator=g) * 15000 + 10000)} for _ in range(4)]

    def step(b):
        loss = model(b)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    s, share = time_steps(step, batches, a.warm, a.steps)
    return {"s_per_step": s, "matmul_share": share, "points": 1 + model.lattice.n_half,
            "enc_features": model.field.encoding.out_dim, "pixels": len(model.lattice)}


def theirs(a) -> dict:
    from torch import nn

    from cryodrgn.commands.train_vae import train_batch
    from cryodrgn.lattice import Lattice
    from cryodrgn.lie_tools import quaternions_to_SO3
    from cryodrgn.models import HetOnlyVAE

    d = a.box + 1  # cryoDRGN pads images to an odd size
    lat = Lattice(d, extent=0.5, device="cpu")
    mask = lat.get_circular_mask(d // 2)
    model = HetOnlyVAE(lat, a.layers, a.width, a.layers, a.width, int(mask.sum()), 8, encode_mode="resid",
                       enc_mask=mask, enc_type="gaussian", enc_dim=None, domain="fourier", activation=nn.ReLU,
                       feat_sigma=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)

    def batch():
        q = torch.randn(a.batch, 4, generator=g)
        ctf = torch.zeros(a.batch, 8)  # Apix, dfu, dfv, angle, kV, Cs, Q0, phase shift
        ctf[:, 0], ctf[:, 1] = 1.5, torch.rand(a.batch, generator=g) * 15000 + 10000
        ctf[:, 2], ctf[:, 4], ctf[:, 5], ctf[:, 6] = ctf[:, 1], 300, 2.7, 0.1
        return torch.randn(a.batch, d, d, generator=g), quaternions_to_SO3(q / q.norm(dim=1, keepdim=True)), ctf

    batches = [batch() for _ in range(4)]

    def step(b):
        train_batch(model, lat, b[0], None, b[1], None, opt, 1 / 8, None, b[2])

    s, share = time_steps(step, batches, a.warm, a.steps)
    n = int(mask.sum())
    return {"s_per_step": s, "matmul_share": share, "points": n // 2 + n % 2, "enc_features": 6 * (a.box // 2),
            "pixels": n}


def worker(a) -> None:
    torch.set_num_threads(1)
    out = (ours if a.worker == "ours" else theirs)(a)
    out["sgemm_gflops"] = sgemm_gflops(a.batch * out["points"], a.width)
    print("RESULT " + json.dumps(out))


def run_worker(side: str, python: str, src: str | None, a) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve())
    cmd = [python, __file__, "--worker", "ours" if side != "cryodrgn" else "theirs", "--box", str(a.box),
           "--batch", str(a.batch), "--width", str(a.width), "--layers", str(a.layers), "--warm", str(a.warm),
           "--steps", str(a.steps)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd="/tmp")
    line = [s for s in res.stdout.splitlines() if s.startswith("RESULT ")]
    if res.returncode or not line:
        raise SystemExit(f"{side} worker failed:\n{res.stderr[-2000:]}")
    r = json.loads(line[0][7:])
    r["gflop_per_step"] = required_gflop(a.batch, r["points"], r["enc_features"], 8, a.width, a.layers,
                                         r["pixels"], concatenated=side != "cryolens")
    r["images_per_cpu_s"] = a.batch / r["s_per_step"]
    r["gflops"] = r["gflop_per_step"] / r["s_per_step"]
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--src", default="src", help="cryolens source folder to measure (PYTHONPATH)")
    ap.add_argument("--base-src", default=None, help="also measure this cryolens source (e.g. before a change)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    cdrgn = os.environ.get("CRYOLENS_CRYODRGN", "")
    sides = {"cryodrgn": (str(Path(cdrgn) / "bin" / "python"), None), "cryolens": (sys.executable, a.src)}
    if a.base_src:
        sides["cryolens_before"] = (sys.executable, a.base_src)
    runs: dict[str, list[dict]] = {k: [] for k in sides}
    for rnd in range(a.rounds):
        for side, (python, src) in sides.items():
            r = run_worker(side, python, src, a)
            runs[side].append(r)
            print(f"round {rnd + 1} {side}: {r['images_per_cpu_s']:.2f} images/CPU-s, {r['gflops']:.1f} GFLOP/s "
                  f"required arithmetic, sgemm {r['sgemm_gflops']:.1f} GFLOP/s, matmul {100 * r['matmul_share']:.0f} %",
                  flush=True)
    keys = ("images_per_cpu_s", "s_per_step", "gflop_per_step", "gflops", "sgemm_gflops", "matmul_share")
    med = {s: {k: statistics.median(r[k] for r in rs) for k in keys} for s, rs in runs.items()}
    print("| code | images/CPU-s | ratio | GFLOP/step | GFLOP/s | sgemm GFLOP/s | of sgemm | matmul share |")
    print("|---|---|---|---|---|---|---|---|")
    for s, m in med.items():
        ratio = m["images_per_cpu_s"] / med["cryodrgn"]["images_per_cpu_s"]
        print(f"| {s} | {m['images_per_cpu_s']:.2f} | {ratio:.2f}× "
              f"| {m['gflop_per_step']:.2f} | {m['gflops']:.1f} | {m['sgemm_gflops']:.1f} "
              f"| {100 * m['gflops'] / m['sgemm_gflops']:.0f} % | {100 * m['matmul_share']:.0f} % |")
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "runs": runs, "medians": med}, indent=1) + "\n")


if __name__ == "__main__":
    main()
