"""``cryolens refine`` on several processes, as a user runs it: under ``torchrun`` (gloo, one thread each),
killed with SIGKILL in its second iteration and resumed on one process, it ends with the map of an
uninterrupted one-process run; a rank that dies, or one that never comes, gives rank 0 a one-line error
and a non-zero exit instead of a hang."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryolens.cli.main import main
from cryolens.imaging.grids import lowpass_volume
from cryolens.io.atomic import read_atoms
from cryolens.io.checkpoint import load_checkpoint
from cryolens.io.mrc import write_volume
from cryolens.metrics.fsc import fsc
from cryolens.simulate import bundled_model
from cryolens.simulate.dataset import simulate_dataset
from cryolens.simulate.density import atoms_to_volume

D, PX = 24, 4.0
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    vol = atoms_to_volume(read_atoms(bundled_model("4E43")), D, PX)
    simulate_dataset(root / "ds", vol, 90, PX, 10.0, shift_std=0.8, shift_max=1.5, seed=3, progress=False)
    write_volume(root / "start.mrc", lowpass_volume(vol, 30.0, PX).numpy(), PX)
    return root


def _args(root: Path, out: Path, iterations: int = 3) -> list[str]:
    return [str(root / "ds" / "particles.star"), "--init-map", str(root / "start.mrc"), "--healpix-order", "1",
            "--local-order", "3", "--max-order", "2", "--max-iterations", str(iterations), "--batch-size", "15",
            "--lowpass", "30", "--quiet", "--out", str(out)]


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CRYOLENS_DIST_TIMEOUT": "60", **extra}


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _wait_for(path: Path, procs, limit_s: float = 240) -> None:
    t0 = time.time()
    while not path.is_file():
        if time.time() - t0 > limit_s or any(p.poll() is not None for p in procs):
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


def _map(path: Path) -> torch.Tensor:
    return torch.from_numpy(mrcfile.read(path).astype(np.float32))


def test_torchrun_refinement_killed_then_resumed_on_one_rank_equals_uninterrupted(data, tmp_path):
    """2 ranks under torchrun, SIGKILL to the whole process group as soon as the first iteration's
    checkpoint is written (so during the second), then ``--resume`` on one process: the final map has
    FSC ≥ 0.999 at every shell with an uninterrupted one-process run's, and the same poses."""
    assert main(["refine", *_args(data, tmp_path / "one")]) == 0
    run = tmp_path / "two"
    proc = subprocess.Popen([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", _free_port(),
                             "--no-python", str(BIN / "cryolens"), "refine", *_args(data, run)],
                            env=_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(run / "checkpoint.pt", [proc])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] < 3  # killed before the end
    assert not (run / "map.mrc").exists()
    assert main(["refine", *_args(data, run), "--resume"]) == 0
    curve = fsc(_map(tmp_path / "one" / "map.mrc"), _map(run / "map.mrc"))
    assert float(curve[1:].min()) >= 0.999, curve
    import starfile

    cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]
    a = starfile.read(tmp_path / "one" / "particles.star")["particles"][cols].to_numpy()
    b = starfile.read(run / "particles.star")["particles"][cols].to_numpy()
    np.testing.assert_allclose(a, b, atol=1e-3)


def _rank(root: Path, out: Path, rank: int, port: str, timeout: str) -> subprocess.Popen:
    env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
               CRYOLENS_DIST_TIMEOUT=timeout)
    return subprocess.Popen([str(BIN / "cryolens"), "refine", *_args(root, out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_killed_rank_gives_rank_zero_one_line_and_a_nonzero_exit(data, tmp_path):
    """Two ranks started by hand; rank 1 gets SIGKILL after the first iteration: rank 0 stops at its next
    collective with exit 3 and one line naming itself and the failed collective (no traceback), well
    before the 60 s timeout. Which collective rank 0 is in when rank 1 dies depends on timing: the
    all-reduce of the next iteration's statistics or of the iterations' timings, or the final barrier, so
    either name is right."""
    port = _free_port()
    procs = [_rank(data, tmp_path / "run", r, port, "60") for r in (0, 1)]
    try:
        _wait_for(tmp_path / "run" / "checkpoint.pt", procs)
        t0 = time.time()
        procs[1].kill()
        _, err = procs[0].communicate(timeout=50)
    finally:
        for p in procs:
            p.kill()
    assert time.time() - t0 < 50
    assert procs[0].returncode == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "rank 0 of 2" in lines[0], err
    assert "all-reduce failed" in lines[0] or "a barrier failed" in lines[0], err
    assert "Traceback" not in err


def test_a_rank_that_never_comes_times_out_with_one_line(data, tmp_path):
    """WORLD_SIZE 2 with only rank 0 started and CRYOLENS_DIST_TIMEOUT 3: the rendezvous gives up after
    the timeout with exit 3 and one line, and nothing is written."""
    proc = _rank(data, tmp_path / "run", 0, _free_port(), "3")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "rank 0 of 2: joining the process group failed" in lines[0], err
    assert not (tmp_path / "run" / "map.mrc").exists()
