"""The cryoDRGN peer's input conversion: what cryoDRGN is handed reads back as the particles it came
from — through cryolens' own readers here, and through cryoDRGN's readers (ImageSource,
PoseTracker, load_ctf_for_training) when its venv is installed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryolens.bench.cryodrgn import (ENV_VAR, CryoDRGNNotFound, cryodrgn_program, parse_epoch_times,
                                     prepare_inputs)
from cryolens.imaging.ctf import CTFParams
from cryolens.io import open_stack, read_cryodrgn, write_stack
from cryolens.io.particles import Particles

N, D = 24, 16


def _particles(tmp_path: Path, order: np.ndarray) -> tuple[Particles, np.ndarray]:
    rng = np.random.default_rng(7)
    images = rng.normal(size=(N, D, D)).astype(np.float32)
    stack = write_stack(tmp_path / "stack.mrcs", images, 1.5)
    ctf = CTFParams(*[torch.as_tensor(v, dtype=torch.float32) for v in (
        rng.uniform(8000, 25000, N), rng.uniform(8000, 25000, N), rng.uniform(0, np.pi, N), np.full(N, 300.0),
        np.full(N, 2.7), np.full(N, 0.1), np.zeros(N), np.zeros(N))])
    p = Particles(pixel_size=1.5, box_size=D, image_files=[str(stack.resolve())], image_file_index=np.zeros(N),
                  image_index=order, rotations=torch.as_tensor(Rotation.random(N, random_state=3).as_matrix(),
                                                               dtype=torch.float32),
                  shifts=torch.as_tensor(rng.uniform(-3, 3, (N, 2)), dtype=torch.float32), ctf=ctf)
    return p, images


@pytest.mark.parametrize("case", ["in order", "permuted", "first half"])
def test_prepare_inputs_read_back(tmp_path, case):
    """Stack image i is particle i's image (a link to the stack when it holds exactly the particles in
    order, a copy in particle order otherwise); the pickles read back as the particles' R, shift (px)
    and CTF."""
    order = np.random.default_rng(1).permutation(N) if case == "permuted" else np.arange(N)
    p, images = _particles(tmp_path, order)
    if case == "first half":
        p, order = p.subset(np.arange(N // 2)), order[:N // 2]
    inp = prepare_inputs(p, tmp_path / "drgn")
    assert inp.particles.is_symlink() == (case == "in order")
    np.testing.assert_array_equal(np.asarray(open_stack(inp.particles)), images[order])
    q = read_cryodrgn(inp.particles, inp.poses, inp.ctf)
    torch.testing.assert_close(q.rotations, p.rotations, atol=1e-6, rtol=0)
    torch.testing.assert_close(q.shifts, p.shifts, atol=1e-5, rtol=0)
    torch.testing.assert_close(q.ctf.defocus_u, p.ctf.defocus_u)
    torch.testing.assert_close(q.ctf.defocus_angle, p.ctf.defocus_angle, atol=1e-6, rtol=0)
    assert q.pixel_size == pytest.approx(1.5) and (inp.n, inp.box_size) == (len(p), D)


def test_epoch_times_and_missing_program(tmp_path, monkeypatch):
    """Epoch seconds parse from cryoDRGN's log lines (H:MM:SS.ffffff, with days); a wrong venv path is a
    clear CryoDRGNNotFound naming the variable."""
    log = ("(INFO) (train_vae.py) (28-Nov-2026 19:50:01) # =====> Epoch: 1 Average gen loss = 0.61, KLD = 2.1, "
           "total loss = 0.62; Finished in 0:09:41.500000\n"
           "(INFO) (train_nn.py) (x) # =====> Epoch: 2 Average loss = 0.6; Finished in 1 day, 1:00:02\n")
    assert parse_epoch_times(log) == [581.5, 86400 + 3602.0]
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "no-venv"))
    with pytest.raises(CryoDRGNNotFound, match=ENV_VAR):
        cryodrgn_program()


_CHECK = """
import json, sys, numpy as np
from cryodrgn.source import ImageSource
from cryodrgn.pose import PoseTracker
from cryodrgn import ctf
stack, poses, ctf_pkl, n, d, out = sys.argv[1:]
n, d = int(n), int(d)
imgs = ImageSource.from_file(stack).images(np.arange(n)).numpy()
pt = PoseTracker.load(poses, n, d)
c = ctf.load_ctf_for_training(d, ctf_pkl)
np.savez(out, images=imgs, rot=pt.rots.numpy(), trans=pt.trans.numpy(), ctf=c)
"""


def test_cryodrgn_reads_prepared_inputs(tmp_path, cryodrgn_exe):
    """cryoDRGN's own readers on the prepared inputs: image i = particle i's image, its rot = our Rᵀ,
    its translation (px, RELION's origin sign) = −our shift, its CTF rows = our Apix, defocus U/V,
    angle (°), kV, Cs, Q0."""
    exe = cryodrgn_exe
    order = np.random.default_rng(2).permutation(N)
    p, images = _particles(tmp_path, order)
    inp = prepare_inputs(p, tmp_path / "drgn")
    python = exe.parent / "python"
    (tmp_path / "check.py").write_text(_CHECK)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([str(python), str(tmp_path / "check.py"), str(inp.particles), str(inp.poses), str(inp.ctf),
                    str(N), str(D), str(tmp_path / "out.npz")], check=True, env=env, capture_output=True, timeout=300)
    got = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(got["images"], images[order], atol=1e-6)
    np.testing.assert_allclose(got["rot"], p.rotations.transpose(1, 2).numpy(), atol=1e-6)
    np.testing.assert_allclose(-got["trans"], p.shifts.numpy(), atol=1e-5)
    # load_ctf_for_training drops the D column: [Apix, U, V, angle °, kV, Cs, Q0, phase °]
    c = got["ctf"]
    np.testing.assert_allclose(c[:, 0], 1.5, rtol=1e-6)
    np.testing.assert_allclose(c[:, 1], p.ctf.defocus_u.numpy(), rtol=1e-6)
    np.testing.assert_allclose(c[:, 2], p.ctf.defocus_v.numpy(), rtol=1e-6)
    np.testing.assert_allclose(c[:, 3], np.rad2deg(p.ctf.defocus_angle.numpy()), atol=1e-4)
    np.testing.assert_allclose(c[:, 4:7], np.tile([300.0, 2.7, 0.1], (N, 1)), rtol=1e-6)


def test_run_measured_reports_the_child_peak_memory(tmp_path):
    """A child that touches a 300 MiB array reports a peak RSS of at least 300 MiB, one that does not
    far less (though this parent is large: the parent's memory must not count); its output goes to the
    log and its exit code comes back."""
    import sys

    from cryolens.bench.cryodrgn import run_measured

    big = [sys.executable, "-c", "import time, numpy as np; a = np.ones(300 * 2**20 // 8); print('sum', a.sum()); "
           "time.sleep(0.5)"]
    wall, rss, cpu, rc, log = run_measured(big, tmp_path / "big.log")
    assert rc == 0 and "sum" in log and rss >= 300 and wall > 0 and cpu >= 0
    _, rss_small, _, rc, _ = run_measured([sys.executable, "-c", "import sys, time; time.sleep(0.5); sys.exit(3)"],
                                       tmp_path / "small.log")
    assert rc == 3 and rss_small < 100


def test_eval_vol_uses_the_weights_of_the_requested_epoch(tmp_path, monkeypatch):
    """eval_vol hands cryoDRGN the final weights.pkl, or weights.E.pkl for ``epoch=E`` (a run still
    training), with the z values in the given order; a missing output map is an error."""
    from cryolens.bench import cryodrgn as C

    seen = []

    def fake_run(args, cwd, threads, program):
        seen.append([str(a) for a in args])
        zs = np.loadtxt(args[args.index("--zfile") + 1], ndmin=2)
        for i in range(len(zs)):
            (Path(args[args.index("-o") + 1]) / f"vol_{i:03d}.mrc").write_bytes(b"")

    monkeypatch.setattr(C, "run_cryodrgn", fake_run)
    z = np.arange(6, dtype=np.float64).reshape(3, 2)
    paths = C.eval_vol(tmp_path / "run", z, tmp_path / "out", 1.5)
    assert seen[-1][1] == str(tmp_path / "run" / "weights.pkl") and len(paths) == 3
    np.testing.assert_allclose(np.loadtxt(tmp_path / "out" / "z_values.txt"), z)
    C.eval_vol(tmp_path / "run", z, tmp_path / "out4", 1.5, epoch=4)
    assert seen[-1][1] == str(tmp_path / "run" / "weights.4.pkl")
    monkeypatch.setattr(C, "run_cryodrgn", lambda *a: None)
    with pytest.raises(C.CryoDRGNError, match="wrote no"):
        C.eval_vol(tmp_path / "run", z, tmp_path / "out5", 1.5)
