"""The RECOVAR 1.0.5 peer (cryolens.bench.recovar):

- its inputs read back through RECOVAR's own loaders (when its venv is installed) as the particles'
  images, poses and CTF in cryoDRGN's convention (R transposed, translation = −shift);
- the adapter's wiring through the benchmark runner, with a stand-in ``recovar`` program that writes a
  known embedding where RECOVAR 1.0.5 writes it (the real program takes ~5 min for the smallest
  dataset, its JIT compilation: measured in benchmarks/RESULTS.md, not run here): the command carries
  the memory flags, the embedding comes back in image order and is scored (latent R² against the
  truth = 1 for an embedding equal to the truth), its k-means clusters are back-projected by cryolens;
- the cluster maps of a two-state set match their own states better than the other's; a cluster of
  one image gets the consensus map.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cryolens.bench import recovar as R
from cryolens.bench.adapters import adapters
from cryolens.bench.cryodrgn import prepare_inputs
from cryolens.bench.runner import available_methods, run_suite
from cryolens.bench.suite import ensure_dataset, load_tasks
from cryolens.errors import InputError
from cryolens.io.dataset import read_images
from cryolens.io.star import read_star
from cryolens.metrics.fsc import fsc, fsc_auc
from cryolens.simulate.dataset import read_ground_truth

_FAKE = """#!{python}
import json, os, sys
import numpy as np
args = sys.argv[1:]
out = args[args.index("-o") + 1]
zdim = int(args[args.index("--zdim") + 1])
os.makedirs(os.path.join(out, "model", f"zdim_{{zdim}}"), exist_ok=True)
z = np.load(os.environ["FAKE_RECOVAR_Z"])[:, :zdim]
np.save(os.path.join(out, "model", f"zdim_{{zdim}}", "latent_coords.npy"), z)
json.dump(args, open(os.environ["FAKE_RECOVAR_ARGS"], "w"))
print("INFO pipeline - standard_recovar_pipeline: embedding time: 1.5")
print("INFO pipeline - standard_recovar_pipeline: total time: 2.25")
"""


def test_stage_times_embedding_and_missing_program(tmp_path, monkeypatch):
    """Stage seconds parse from RECOVAR's log lines; the embedding is read with its shape checked (one
    line naming the file otherwise); a wrong venv is a RecovarNotFound naming CRYOLENS_RECOVAR, and the
    runner then has no ``recovar`` method."""
    log = ("2026-12-06 01:12:08,303.303 INFO pipeline - standard_recovar_pipeline: embedding time: 297.84734582901\n"
           "2026-12-06 01:12:11,607.607 INFO pipeline - standard_recovar_pipeline: total time: 301.15\n"
           "x noise - upper_bound_noise_by_signal_p_noise: variance estimation time: 57.66\n")
    assert R.parse_stage_times(log) == {"embedding": 297.84734582901, "total": 301.15}
    d = tmp_path / "out" / "model" / "zdim_2"
    d.mkdir(parents=True)
    np.save(d / "latent_coords.npy", np.arange(6.0).reshape(3, 2))
    np.testing.assert_array_equal(R.read_embedding(tmp_path / "out", 2, 3), np.arange(6.0).reshape(3, 2))
    with pytest.raises(InputError, match="latent_coords.npy: embedding of shape"):
        R.read_embedding(tmp_path / "out", 2, 4)
    with pytest.raises(InputError, match="no RECOVAR embedding for zdim 4"):
        R.read_embedding(tmp_path / "out", 4)
    monkeypatch.setenv(R.ENV_VAR, str(tmp_path / "no-venv"))
    with pytest.raises(R.RecovarNotFound, match=R.ENV_VAR):
        R.recovar_program()
    assert "recovar" not in adapters() and "recovar" in adapters(available_only=False)


def test_cluster_maps_match_their_states(bench_cache):
    """Two-state set, an embedding that separates the states: k-means finds them (up to the label
    order) and each cluster's back-projection has a higher FSC-AUC against its own state's true map
    than against the other state's."""
    task = next(t for t in load_tasks("tiny") if t.name == "discrete-poses-snr1")
    ds = ensure_dataset(task, bench_cache)
    gt = read_ground_truth(ds)
    truth = np.asarray(gt["labels"])
    z = truth[:, None] * 5.0 + np.random.default_rng(0).normal(0, 0.3, (len(truth), 2))
    particles = read_star(ds / "particles.star")
    labels, maps, consensus = R.cluster_maps(particles, z.astype(np.float32), 2)
    perm = [int(np.bincount(truth[labels == k]).argmax()) for k in range(2)]
    assert sorted(perm) == [0, 1] and np.array_equal(np.asarray(perm)[labels], truth)
    from cryolens.io.mrc import read_volume

    vols = [torch.from_numpy(read_volume(p)[0].copy()) for p in gt["volume_files"]]
    d = maps.shape[-1]
    for k in range(2):
        own, other = (fsc_auc(fsc(maps[k], vols[s]), d) for s in (perm[k], 1 - perm[k]))
        assert own > other
    z[0] = 100.0  # an outlier: its one-image cluster gets the consensus map (no half-sets to filter by)
    labels, maps, consensus = R.cluster_maps(particles, z.astype(np.float32), 3)
    lone = int(labels[0])
    assert np.count_nonzero(labels == lone) == 1 and torch.equal(maps[lone], consensus)


def test_adapter_in_the_runner_with_a_stand_in_program(bench_cache, tmp_path, monkeypatch):
    """The runner's ``recovar`` row on the tiny continuous task, RECOVAR replaced by a script writing the
    true hinge angles (and noise) as the embedding: the command has --mask sphere --accept-cpu --zdim 2
    --gpu-budget-gb 3 --low-memory-option and cryoDRGN-format inputs; the latent R² is 1 (|Spearman| of
    the truth itself), stage times are in the metrics, per-image FSC-AUC and class maps are scored."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    exe = venv / "bin" / "recovar"
    exe.write_text(_FAKE.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    task = next(t for t in load_tasks("tiny") if t.name == "continuous-poses-snr1")
    task.scores = ["per_image_fsc_auc", "latent_truth"]  # the scores checked here (the others cost time)
    ds = ensure_dataset(task, bench_cache)
    angles = np.asarray(read_ground_truth(ds)["hinge_angle_deg"], dtype=np.float32)
    z = np.stack([angles, np.random.default_rng(1).normal(size=len(angles)).astype(np.float32)], 1)
    np.save(tmp_path / "z.npy", z)
    monkeypatch.setenv(R.ENV_VAR, str(venv))
    monkeypatch.setenv("FAKE_RECOVAR_Z", str(tmp_path / "z.npy"))
    monkeypatch.setenv("FAKE_RECOVAR_ARGS", str(tmp_path / "args.json"))
    methods = available_methods(["recovar"])
    assert methods["recovar"].origin == "adapter"
    rows = run_suite([task], methods, tmp_path / "out", budget_s=300, cache_dir=bench_cache, halves=False,
                     overrides={"recovar": {"zdim": 2, "clusters": 4}})
    row = rows[0]
    assert row["status"] == "ok", row.get("error")
    args = json.loads((tmp_path / "args.json").read_text())
    for flag in ("--accept-cpu", "--low-memory-option"):
        assert flag in args
    assert args[args.index("--mask") + 1] == "sphere" and args[args.index("--zdim") + 1] == "2"
    assert args[args.index("--gpu-budget-gb") + 1] == "3"
    assert args[0] == "pipeline" and args[1].endswith("particles.mrcs")
    m = row["metrics"]
    assert m["latent_truth_r2"] == pytest.approx(1.0, abs=1e-6)
    assert m["method_recovar_embedding_s"] == 1.5 and m["method_recovar_total_s"] == 2.25
    assert 0 < m["per_image_fsc_auc_mean"] <= 0.5
    rd = Path(row["run_dir"])
    np.testing.assert_allclose(np.load(rd / "arrays.npz")["latents"], z)


_CHECK = """
import sys, numpy as np, mrcfile
from recovar.data_io.load_utils import load_ctf_params, load_poses
stack, poses, ctf, n, d, out = sys.argv[1:]
n, d = int(n), int(d)
rots, trans, _ = load_poses(poses, n, d)
c = load_ctf_params(d, ctf)
with mrcfile.open(stack, permissive=True) as m:
    images = np.asarray(m.data)
np.savez(out, rots=rots, trans=trans, ctf=c, images=images)
"""


@pytest.fixture
def recovar_exe():
    """The ``recovar`` program of RECOVAR 1.0.5's venv (``CRYOLENS_RECOVAR`` or PATH). Skipped with the
    reason when missing, failed under ``CRYOLENS_REQUIRE_RECOVAR=1`` (CI installs it)."""
    try:
        return R.recovar_program()
    except R.RecovarNotFound as e:
        if os.environ.get("CRYOLENS_REQUIRE_RECOVAR") == "1":
            pytest.fail(f"{e}; CRYOLENS_REQUIRE_RECOVAR=1 makes this a failure")
        pytest.skip(str(e))


def test_recovar_reads_prepared_inputs(bench_cache, tmp_path, recovar_exe):
    """RECOVAR's own pickle loaders (``load_utils``, which its pipeline's dataset loading calls for .pkl
    inputs) on the prepared inputs: image i = particle i,
    rotation = our Rᵀ, translation (px) = −our shift, CTF rows = our defocus U/V (Å), angle (°), kV, Cs,
    amplitude contrast."""
    task = next(t for t in load_tasks("tiny") if t.name == "continuous-poses-snr1")
    p = read_star(ensure_dataset(task, bench_cache) / "particles.star")
    p = p.subset(np.random.default_rng(3).permutation(len(p))[:40])
    inp = prepare_inputs(p, tmp_path / "in")
    (tmp_path / "check.py").write_text(_CHECK)
    subprocess.run([str(recovar_exe.parent / "python"), str(tmp_path / "check.py"), str(inp.particles),
                    str(inp.poses), str(inp.ctf), str(len(p)), str(p.box_size), str(tmp_path / "o.npz")],
                   check=True, capture_output=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    got = np.load(tmp_path / "o.npz")
    np.testing.assert_array_equal(got["images"], read_images(p, np.arange(len(p))).numpy())
    np.testing.assert_allclose(got["rots"], p.rotations.transpose(1, 2).numpy(), atol=1e-6)
    np.testing.assert_allclose(-got["trans"], p.shifts.numpy(), atol=1e-4)
    c = got["ctf"]  # [Apix, U, V, angle °, kV, Cs, Q0, phase °] (the pipeline appends B-factor 0, contrast 1)
    np.testing.assert_allclose(c[:, 0], p.pixel_size, rtol=1e-6)
    np.testing.assert_allclose(c[:, 1], p.ctf.defocus_u.numpy(), rtol=1e-6)
    np.testing.assert_allclose(c[:, 2], p.ctf.defocus_v.numpy(), rtol=1e-6)
    np.testing.assert_allclose(c[:, 3], np.rad2deg(p.ctf.defocus_angle.numpy()), atol=1e-4)
    np.testing.assert_allclose(c[:, 4:7], np.stack([p.ctf.voltage.numpy(), p.ctf.cs.numpy(),
                                                    p.ctf.amplitude_contrast.numpy()], 1), rtol=1e-6)
    np.testing.assert_allclose(c[:, 7], np.rad2deg(p.ctf.phase_shift.numpy()), atol=1e-4)
