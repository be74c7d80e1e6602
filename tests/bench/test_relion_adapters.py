"""The RELION adapters: relion_reconstruct through the runner gives the same map as our
back-projection (an independent implementation) to FSC > 0.9 up to the shell where back-projection
itself is resolved; the auto-refine adapter's command and its output reader (on a hand-written
run_data.star with known angles)."""

import numpy as np
import pytest
import torch

from cryolens.bench.adapters import RelionRefineConfig
from cryolens.bench.relion import read_refine_outputs, refine_command
from cryolens.bench.runner import available_methods, run_suite
from cryolens.bench.suite import ensure_dataset, load_tasks
from cryolens.imaging.rotations import euler_to_matrix
from cryolens.io.mrc import read_volume
from cryolens.io.star import read_star

pytestmark = pytest.mark.relion


def test_relion_reconstruct_adapter_matches_backprojection(tmp_path, bench_cache):
    """Both methods on the tiny homogeneous task: their maps agree (FSC ≥ 0.9 over shells 1–4)."""
    from cryolens.metrics.fsc import fsc

    task = next(t for t in load_tasks("tiny") if t.name == "homogeneous-poses-snr1")
    rows = run_suite([task], available_methods(["relion-reconstruct", "backprojection"]), tmp_path / "out",
                     budget_s=120, cache_dir=bench_cache)
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
    a = read_volume(tmp_path / "out/runs/homogeneous-poses-snr1/relion-reconstruct/map.mrc")[0]
    b = read_volume(tmp_path / "out/runs/homogeneous-poses-snr1/backprojection/map.mrc")[0]
    assert fsc(a, b)[1:5].min() > 0.9


def test_refine_output_reader(tmp_path, bench_cache):
    """run_data.star written with known RELION angles (in shuffled row order) is read back into
    cryolens rotations R = Rz(rot) Ry(tilt) Rz(psi), in the particles' order, with shifts = −origin/px."""
    from cryolens.bench.relion import write_particles_star

    task = next(t for t in load_tasks("tiny") if t.name == "homogeneous-poses-snr1")
    ds = ensure_dataset(task, bench_cache)
    particles = read_star(ds / "particles.star")
    n = len(particles)
    rng = np.random.default_rng(0)
    ang = rng.uniform([-180, 0, -180], [180, 180, 180], (n, 3))
    orig = rng.uniform(-3, 3, (n, 2))
    perm = rng.permutation(n)
    out = tmp_path / "out"
    out.mkdir()
    (out / "particles.mrcs").symlink_to(ds / "particles.mrcs")
    write_particles_star(out / "run_data.star", particles.pixel_size, particles.box_size, ang[perm], orig[perm],
                         image_names=[f"{i + 1:06d}@particles.mrcs" for i in perm])
    rots, shifts, _ = read_refine_outputs(out, particles)
    want = euler_to_matrix(*torch.deg2rad(torch.as_tensor(ang, dtype=torch.float64)).T)
    assert np.abs(rots - want.numpy()).max() < 1e-4
    assert np.abs(shifts - (-orig / particles.pixel_size)).max() < 1e-4
    cmd = refine_command(RelionRefineConfig(ini_high_A=30, healpix_order=2, local_healpix_order=4), 6.0, 16, True)
    assert "--auto_refine" in cmd and "--split_random_halves" in cmd and "--ctf" in cmd
