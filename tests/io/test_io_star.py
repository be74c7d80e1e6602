"""RELION STAR files: reading 3.0 / 3.1 / RELION 5 tables written by hand, writing files that an
independent parser (and RELION itself) reads with the right conventions."""

import logging
import subprocess

import numpy as np
import pytest
import starfile
import torch
from scipy.spatial.transform import Rotation

from cryolens.io.dataset import iterate_batches
from cryolens.io.mrc import write_volume
from cryolens.io.star import read_star, write_star

from _io_data import (assert_particles_close, euler_table, make_stack, random_particles, require_program,
                      write_star_by_hand)


def _names(order, stack="particles.mrcs"):
    return [f"{i + 1:06d}@{stack}" for i in order]


def test_read_relion31_matches_scipy(tmp_path):
    """RELION 3.1 (optics + particles): R equals scipy's intrinsic ZYZ matrix of (rot, tilt, psi),
    shift = −rlnOriginXAngst / pixel size, CTF angles in radians, optics values broadcast,
    1-based image names → 0-based indices, unknown columns kept."""
    n, px = 12, 1.7
    make_stack(tmp_path / "particles.mrcs", n=n)
    eul, mats = euler_table(n, seed=4)
    rng = np.random.default_rng(4)
    order = rng.permutation(n)
    origin = rng.uniform(-5, 5, (n, 2))
    du, dv, ang, ph = rng.uniform(1e4, 2e4, n), rng.uniform(1e4, 2e4, n), rng.uniform(0, 180, n), rng.uniform(0, 90, n)
    path = write_star_by_hand(tmp_path / "particles.star", {
        "optics": {"rlnOpticsGroupName": ["g1"], "rlnOpticsGroup": [1], "rlnImagePixelSize": [px],
                   "rlnImageSize": [16], "rlnImageDimensionality": [2], "rlnVoltage": [200.0],
                   "rlnSphericalAberration": [2.0], "rlnAmplitudeContrast": [0.07]},
        "particles": {"rlnImageName": _names(order), "rlnAngleRot": eul[:, 0], "rlnAngleTilt": eul[:, 1],
                      "rlnAnglePsi": eul[:, 2], "rlnOriginXAngst": origin[:, 0], "rlnOriginYAngst": origin[:, 1],
                      "rlnDefocusU": du, "rlnDefocusV": dv, "rlnDefocusAngle": ang, "rlnPhaseShift": ph,
                      "rlnOpticsGroup": np.ones(n, dtype=int), "rlnClassNumber": np.arange(n) % 3 + 1,
                      "rlnMicrographName": [f"mic{i}.mrc" for i in range(n)]}})
    p = read_star(path)
    assert len(p) == n and p.box_size == 16 and p.pixel_size == pytest.approx(px)
    np.testing.assert_array_equal(p.image_index, order)
    assert p.image_files == [str((tmp_path / "particles.mrcs").resolve())]
    np.testing.assert_allclose(p.rotations.numpy(), mats, atol=1e-6)
    np.testing.assert_allclose(p.shifts.numpy(), -origin / px, atol=1e-5)
    np.testing.assert_allclose(p.ctf.defocus_u.numpy(), du, rtol=1e-6)
    np.testing.assert_allclose(p.ctf.defocus_v.numpy(), dv, rtol=1e-6)
    np.testing.assert_allclose(p.ctf.defocus_angle.numpy(), np.deg2rad(ang), atol=1e-6)
    np.testing.assert_allclose(p.ctf.phase_shift.numpy(), np.deg2rad(ph), atol=1e-6)
    np.testing.assert_allclose(p.ctf.voltage.numpy(), 200.0)
    np.testing.assert_allclose(p.ctf.cs.numpy(), 2.0)
    np.testing.assert_allclose(p.ctf.amplitude_contrast.numpy(), 0.07, rtol=1e-6)
    np.testing.assert_array_equal(p.extra["rlnClassNumber"], np.arange(n) % 3 + 1)
    assert list(p.extra["rlnMicrographName"])[:2] == ["mic0.mrc", "mic1.mrc"]
    assert "rlnAngleRot" not in p.extra and "rlnOpticsGroup" not in p.extra


def test_read_relion30(tmp_path):
    """RELION 3.0 (one table): origins in pixels (shift = −rlnOriginX), pixel size =
    rlnDetectorPixelSize µm · 10⁴ / rlnMagnification, microscope values per particle."""
    n = 8
    make_stack(tmp_path / "particles.mrcs", n=n)
    eul, mats = euler_table(n, seed=5)
    origin = np.random.default_rng(5).uniform(-3, 3, (n, 2))
    path = write_star_by_hand(tmp_path / "old.star", {"": {
        "rlnImageName": _names(range(n)), "rlnAngleRot": eul[:, 0], "rlnAngleTilt": eul[:, 1],
        "rlnAnglePsi": eul[:, 2], "rlnOriginX": origin[:, 0], "rlnOriginY": origin[:, 1],
        "rlnDefocusU": np.full(n, 15000.0), "rlnDefocusV": np.full(n, 14000.0), "rlnDefocusAngle": np.full(n, 30.0),
        "rlnVoltage": np.full(n, 300.0), "rlnSphericalAberration": np.full(n, 2.7),
        "rlnAmplitudeContrast": np.full(n, 0.1), "rlnDetectorPixelSize": np.full(n, 12.5),
        "rlnMagnification": np.full(n, 100000.0)}})
    p = read_star(path)
    assert p.pixel_size == pytest.approx(1.25)
    np.testing.assert_allclose(p.rotations.numpy(), mats, atol=1e-6)
    np.testing.assert_allclose(p.shifts.numpy(), -origin, atol=1e-6)
    np.testing.assert_allclose(p.ctf.defocus_angle.numpy(), np.deg2rad(30.0), atol=1e-7)
    np.testing.assert_allclose(p.ctf.voltage.numpy(), 300.0)
    assert "rlnMagnification" not in p.extra


def test_read_relion5_with_extra_blocks_and_columns(tmp_path):
    """A RELION 5 file (a data_general block, tomography columns, extra optics columns) reads:
    unknown particle columns go to extra; no poses or CTF columns → None."""
    n = 5
    make_stack(tmp_path / "particles.mrcs", n=n)
    path = write_star_by_hand(tmp_path / "r5.star", {
        "general": {"rlnTomoSubTomosAre2DStacks": [1]},
        "optics": {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g"], "rlnImagePixelSize": [1.5],
                   "rlnImageSize": [16], "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
                   "rlnAmplitudeContrast": [0.1], "rlnTomoTiltSeriesPixelSize": [0.75], "rlnBeamTiltX": [0.0]},
        "particles": {"rlnTomoName": ["TS_01"] * n, "rlnTomoParticleName": [f"TS_01/{i}" for i in range(n)],
                      "rlnImageName": _names(range(n)), "rlnOpticsGroup": [1] * n,
                      "rlnAnglePsi": np.zeros(n), "rlnCoordinateX": np.arange(n, dtype=float)}})
    p = read_star(path)
    assert p.rotations is None and p.shifts is None and p.ctf is None
    assert {"rlnTomoName", "rlnTomoParticleName", "rlnCoordinateX", "rlnAnglePsi"} <= set(p.extra)
    assert p.pixel_size == pytest.approx(1.5)


def test_write_star_read_by_an_independent_parser(tmp_path):
    """write_star's file, parsed with the starfile package: scipy's ZYZ matrices of the written
    angles are the particles' rotations, rlnOriginXAngst = −shift · pixel size, angles in degrees,
    one optics group per (voltage, Cs, Q0), image names relative to the STAR file's folder."""
    stack = make_stack(tmp_path / "stacks" / "p.mrcs", n=20)
    p = random_particles(stack, n=20)
    write_star(tmp_path / "out.star", p)
    blocks = starfile.read(tmp_path / "out.star", always_dict=True)
    opt, df = blocks["optics"], blocks["particles"]
    assert len(opt) == 2 and set(opt["rlnVoltage"]) == {200.0, 300.0}
    assert (opt["rlnImagePixelSize"] == 1.5).all() and (opt["rlnImageSize"] == 16).all()
    mats = Rotation.from_euler("ZYZ", df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(),
                               degrees=True).as_matrix()
    np.testing.assert_allclose(mats, p.rotations.numpy(), atol=1e-5)
    np.testing.assert_allclose(df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(), -p.shifts.numpy() * 1.5,
                               atol=1e-5)
    np.testing.assert_allclose(df["rlnDefocusAngle"], np.rad2deg(p.ctf.defocus_angle.numpy()), atol=1e-4)
    volt = opt.set_index("rlnOpticsGroup")["rlnVoltage"]
    np.testing.assert_allclose(volt[df["rlnOpticsGroup"]].to_numpy(), p.ctf.voltage.numpy())
    assert list(df["rlnImageName"][:2]) == [f"{p.image_index[0] + 1:06d}@stacks/p.mrcs",
                                            f"{p.image_index[1] + 1:06d}@stacks/p.mrcs"]
    np.testing.assert_array_equal(df["rlnClassNumber"], p.extra["rlnClassNumber"])


@pytest.mark.parametrize("version", ["3.1", "3.0"])
def test_star_round_trip(tmp_path, version):
    """read_star(write_star(p)) gives back p: rotations, shifts, every CTF field (1e-5), extra columns."""
    stack = make_stack(tmp_path / "p.mrcs", n=30)
    p = random_particles(stack, n=30, seed=7)
    # include gimbal-lock poses (tilt 0 and 180°), where Euler angles are not unique
    p.rotations[0] = torch.as_tensor(Rotation.from_euler("ZYZ", [40, 0, 10], degrees=True).as_matrix())
    p.rotations[1] = torch.as_tensor(Rotation.from_euler("ZYZ", [40, 180, 10], degrees=True).as_matrix())
    q = read_star(write_star(tmp_path / "rt.star", p, version=version))
    assert_particles_close(p, q)
    for k in ("rlnClassNumber", "rlnRandomSubset"):
        np.testing.assert_array_equal(q.extra[k], p.extra[k])


def test_multiple_optics_groups_round_trip(tmp_path):
    """Two optics groups with different voltage / Cs give per-particle values, and are written back."""
    n = 6
    make_stack(tmp_path / "particles.mrcs", n=n)
    groups = np.array([1, 2, 1, 2, 2, 1])
    path = write_star_by_hand(tmp_path / "two.star", {
        "optics": {"rlnOpticsGroup": [1, 2], "rlnOpticsGroupName": ["a", "b"], "rlnImagePixelSize": [1.5, 1.5],
                   "rlnImageSize": [16, 16], "rlnVoltage": [300.0, 200.0], "rlnSphericalAberration": [2.7, 0.01],
                   "rlnAmplitudeContrast": [0.1, 0.07]},
        "particles": {"rlnImageName": _names(range(n)), "rlnOpticsGroup": groups,
                      "rlnDefocusU": np.full(n, 1e4), "rlnDefocusV": np.full(n, 1e4), "rlnDefocusAngle": np.zeros(n)}})
    p = read_star(path)
    np.testing.assert_allclose(p.ctf.voltage.numpy(), np.where(groups == 1, 300.0, 200.0))
    np.testing.assert_allclose(p.ctf.cs.numpy(), np.where(groups == 1, 2.7, 0.01), rtol=1e-6)
    q = read_star(write_star(tmp_path / "two_out.star", p))
    np.testing.assert_allclose(q.ctf.voltage.numpy(), p.ctf.voltage.numpy())
    np.testing.assert_allclose(q.ctf.amplitude_contrast.numpy(), p.ctf.amplitude_contrast.numpy())


def test_stack_paths_star_folder_first_then_cwd(tmp_path, monkeypatch, caplog):
    """Relative stack paths resolve against the STAR file's folder first, then the current folder
    (as RELION does), and the fallback is logged."""
    monkeypatch.chdir(tmp_path)
    make_stack(tmp_path / "Extract" / "a.mrcs", n=4)  # relative to the project (current) folder
    (tmp_path / "Refine3D").mkdir()
    star = write_star_by_hand(tmp_path / "Refine3D" / "run_data.star", {
        "optics": {"rlnOpticsGroup": [1], "rlnImagePixelSize": [1.5], "rlnImageSize": [16]},
        "particles": {"rlnImageName": _names(range(4), "Extract/a.mrcs"), "rlnOpticsGroup": [1] * 4}})
    with caplog.at_level(logging.WARNING):
        p = read_star(star)
    assert p.image_files == [str((tmp_path / "Extract" / "a.mrcs").resolve())]
    assert "Extract/a.mrcs" in caplog.text
    # a stack of the same name beside the STAR file wins
    make_stack(tmp_path / "Refine3D" / "Extract" / "a.mrcs", n=4, seed=9)
    assert read_star(star).image_files == [str((tmp_path / "Refine3D" / "Extract" / "a.mrcs").resolve())]


@pytest.mark.relion
def test_relion_project_agrees_with_our_star_conventions(tmp_path):
    """End to end against RELION 3.1: relion_project renders a Gaussian map with the poses, shifts
    and CTFs (with phase shift) of a STAR file written by write_star; read_star of RELION's output
    STAR + stack, rendered with cryolens' own forward model, gives the same images (correlation
    > 0.9999). Transposed rotations, negated shifts or a negated phase shift do not."""
    relion_project = require_program("relion_project")
    from cryolens.imaging.forward import render_images
    from cryolens.imaging.gaussian import gaussian_volume

    d, n, px = 32, 6, 2.0
    centers = torch.tensor([[4.0, 0, 0], [0, -6, 2], [-3, 3, -5], [2, 5, 6]], dtype=torch.float64)
    vol = gaussian_volume(centers, torch.tensor([1.5, 2.0, 1.8, 1.2], dtype=torch.float64),
                          torch.tensor([1.0, 0.8, 1.2, 0.6], dtype=torch.float64), d).float()
    write_volume(tmp_path / "vol.mrc", vol, px)
    stack = make_stack(tmp_path / "dummy.mrcs", n=n, d=d, pixel_size=px)
    p = random_particles(stack, n=n, d=d, pixel_size=px, seed=11, bfactor=False)
    p.shifts = p.shifts * 0.75
    write_star(tmp_path / "ang.star", p)
    subprocess.run([relion_project, "--i", "vol.mrc", "--ang", "ang.star", "--o", "proj", "--ctf"],
                   cwd=tmp_path, check=True, capture_output=True)
    q = read_star(tmp_path / "proj.star")
    assert_particles_close(p, q, ctf_fields=["defocus_u", "defocus_v", "defocus_angle", "phase_shift", "voltage"],
                           same_images=False)
    _, relion_images = next(iterate_batches(q, n))

    def corr(images):
        a, b = relion_images.reshape(n, -1).double(), images.reshape(n, -1).double()
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))

    ours = corr(render_images(vol, q.rotations, q.shifts, q.ctf, q.pixel_size))
    assert ours.min() > 0.9999, ours
    wrong_r = corr(render_images(vol, q.rotations.transpose(1, 2), q.shifts, q.ctf, q.pixel_size))
    wrong_s = corr(render_images(vol, q.rotations, -q.shifts, q.ctf, q.pixel_size))
    neg_phase = q.ctf[torch.arange(n)]
    neg_phase.phase_shift = -neg_phase.phase_shift
    wrong_p = corr(render_images(vol, q.rotations, q.shifts, neg_phase, q.pixel_size))
    for wrong in (wrong_r, wrong_s, wrong_p):
        assert wrong.mean() < 0.99, wrong
