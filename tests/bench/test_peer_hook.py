"""The cryoDRGN peer hook: a module ``cryolens.bench.cryodrgn`` with the peer functions makes the
``cryodrgn-4.3`` adapters appear, and the runner scores them like any recipe. cryoDRGN itself is not
needed: a stand-in module records the calls and returns known latents and maps (the real peer
module is tested by its own author)."""

import sys
import types
from pathlib import Path

import numpy as np

from cryolens.bench.runner import available_methods, run_suite
from cryolens.bench.suite import load_tasks


def _fake_module(calls):
    mod = types.ModuleType("cryolens.bench.cryodrgn")

    def prepare_inputs(particles, folder):
        calls.append(("prepare", particles.rotations is not None, particles.ctf is not None))
        Path(folder).mkdir(parents=True, exist_ok=True)
        return types.SimpleNamespace(n=len(particles), box_size=particles.box_size)

    def train_vae(inputs, outdir, **kw):
        calls.append(("train_vae", kw["zdim"], kw["epochs"]))
        return types.SimpleNamespace(wall_s=1.0, peak_rss_mib=10.0)

    def read_latents(outdir):
        return np.random.default_rng(0).standard_normal((160, 8)).astype(np.float32)

    def eval_vol(outdir, z, out, pixel_size, threads=1):
        calls.append(("eval_vol", len(z)))
        return [len(z)]

    def read_maps(paths):
        n = paths[0] if isinstance(paths, list) else 1
        return np.ones((n, 16, 16, 16), dtype=np.float32)

    for f in (prepare_inputs, train_vae, read_latents, eval_vol, read_maps):
        setattr(mod, f.__name__, f)
    mod.train_nn = train_vae
    mod.cryodrgn_program = lambda: Path("/bin/true")
    return mod


def test_peer_adapter_is_found_and_scored(tmp_path, monkeypatch, bench_cache):
    """With the stand-in module the adapter is listed and runs on the tiny continuous task; its row
    carries the per-image FSC-AUC of its (constant, hence unrelated) maps, ≈ 0, and latent metrics."""
    calls = []
    monkeypatch.setitem(sys.modules, "cryolens.bench.cryodrgn", _fake_module(calls))
    methods = available_methods(["cryodrgn-4.3"])
    task = next(t for t in load_tasks("tiny") if t.name == "continuous-poses-snr1")
    rows = run_suite([task], methods, tmp_path / "out", budget_s=120, cache_dir=bench_cache, halves=False)
    assert rows[0]["status"] == "ok", rows[0].get("error")
    m = rows[0]["metrics"]
    assert abs(m["per_image_fsc_auc_mean"]) < 0.05 and "latent_truth_r2" in m
