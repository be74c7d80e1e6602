"""cryoSPARC .cs and cryoDRGN pickles: their conventions, checked with scipy and with cryoDRGN's own
formulas (and its parsers when installed), and the STAR → .cs → cryoDRGN → STAR round trip."""

import os
import pickle
import subprocess

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryolens.errors import InputError
from cryolens.io.convert import convert
from cryolens.io.cryodrgn import (read_cryodrgn, read_pose_pickle, write_cryodrgn_ctf, write_cryodrgn_poses)
from cryolens.io.cryosparc import read_cs, write_cs
from cryolens.io.dataset import read_particles
from cryolens.io.star import read_star, write_star

from _io_data import assert_particles_close, make_stack, random_particles, sha

NO_B = ["defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast", "phase_shift"]


def cryodrgn_R_from_relion(rot_deg, tilt_deg, psi_deg):
    """cryoDRGN's ``utils.R_from_relion`` formula, re-expressed: Rz(psi)·Ry'(tilt)·Rz(rot) with
    Ry' = [[c, 0, −s], [0, 1, 0], [s, 0, c]], then the signs of the (0,1), (1,0), (1,2), (2,1)
    entries flipped. It should be RELION's A = our Rᵀ."""
    a, b, y = np.deg2rad(rot_deg), np.deg2rad(tilt_deg), np.deg2rad(psi_deg)
    ca, sa, cb, sb, cy, sy = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(y), np.sin(y)
    ra = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    rb = np.array([[cb, 0, -sb], [0, 1, 0], [sb, 0, cb]])
    ry = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    r = ry @ rb @ ra
    for i, j in ((0, 1), (1, 0), (1, 2), (2, 1)):
        r[i, j] *= -1
    return r


def test_round_trip_star_cs_cryodrgn_star(tmp_path):
    """STAR → .cs → cryoDRGN pickles (+ stack) → STAR keeps rotations, shifts and CTFs to 1e-5
    (cryoDRGN's CTF pickle has no B-factor, so none is used here)."""
    stack = make_stack(tmp_path / "particles.mrcs", n=40)
    p = random_particles(stack, n=40, seed=3, bfactor=False)
    p.image_index = np.arange(40)  # cryoDRGN pairs pickle row i with stack image i
    a = read_star(write_star(tmp_path / "a.star", p))
    b = read_cs(write_cs(tmp_path / "b.cs", a))
    write_cryodrgn_poses(tmp_path / "poses.pkl", b)
    write_cryodrgn_ctf(tmp_path / "ctf.pkl", b)
    c = read_cryodrgn(stack, tmp_path / "poses.pkl", tmp_path / "ctf.pkl")
    d = read_star(write_star(tmp_path / "d.star", c))
    for q in (a, b, c, d):
        assert_particles_close(p, q, ctf_fields=NO_B)
    np.testing.assert_array_equal(b.extra["rlnRandomSubset"], p.extra["rlnRandomSubset"])
    np.testing.assert_array_equal(b.extra["rlnClassNumber"], p.extra["rlnClassNumber"])


def test_cs_fields_follow_cryosparc_conventions(tmp_path):
    """In the written .cs (read with numpy): scipy's from_rotvec(alignments3D/pose) is R,
    alignments3D/shift = −shift (RELION's origin sign), angles in radians, 0-based blob/idx,
    split = rlnRandomSubset − 1, blob/path relative to the .cs folder."""
    stack = make_stack(tmp_path / "J3" / "particles.mrcs", n=20)
    p = random_particles(stack, n=20, seed=5)
    write_cs(tmp_path / "J3" / "out.cs", p)
    cs = np.load(tmp_path / "J3" / "out.cs")
    np.testing.assert_allclose(Rotation.from_rotvec(cs["alignments3D/pose"]).as_matrix(), p.rotations.numpy(),
                               atol=1e-6)
    np.testing.assert_allclose(cs["alignments3D/shift"], -p.shifts.numpy(), atol=1e-6)
    np.testing.assert_allclose(cs["ctf/df_angle_rad"], p.ctf.defocus_angle.numpy(), atol=1e-7)
    np.testing.assert_allclose(cs["ctf/phase_shift_rad"], p.ctf.phase_shift.numpy(), atol=1e-7)
    np.testing.assert_allclose(cs["ctf/df1_A"], p.ctf.defocus_u.numpy())
    np.testing.assert_allclose(cs["ctf/bfactor"], p.ctf.bfactor.numpy())
    np.testing.assert_array_equal(cs["blob/idx"], p.image_index)
    np.testing.assert_array_equal(cs["alignments3D/split"], p.extra["rlnRandomSubset"] - 1)
    assert cs["blob/path"][0] == b"particles.mrcs"
    assert (cs["blob/shape"] == 16).all() and np.allclose(cs["blob/psize_A"], 1.5)
    assert len(set(cs["uid"].tolist())) == 20


def test_read_handmade_cs(tmp_path):
    """A .cs built here with numpy: R = scipy from_rotvec(pose), shift = −alignments3D/shift,
    rescaled by alignments3D/psize_A / blob/psize_A; paths relative to the project folder (the
    .cs folder's parent) with cryoSPARC's '>' link prefix resolve."""
    n = 10
    make_stack(tmp_path / "J1" / "imported" / "p.mrcs", n=n)
    (tmp_path / "J5").mkdir()
    rng = np.random.default_rng(8)
    rv = Rotation.random(n, random_state=8).as_rotvec()
    shift = rng.uniform(-3, 3, (n, 2))
    dtype = [("uid", "<u8"), ("blob/path", "S40"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
             ("blob/psize_A", "<f4"), ("alignments3D/pose", "<f4", (3,)), ("alignments3D/shift", "<f4", (2,)),
             ("alignments3D/psize_A", "<f4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"),
             ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4")]
    cs = np.zeros(n, dtype=dtype)
    cs["uid"] = np.arange(n) + 1000
    cs["blob/path"] = b">J1/imported/p.mrcs"
    cs["blob/idx"] = np.arange(n)[::-1]
    cs["blob/shape"] = 16
    cs["blob/psize_A"] = 1.5
    cs["alignments3D/pose"] = rv
    cs["alignments3D/shift"] = shift
    cs["alignments3D/psize_A"] = 3.0  # aligned at 2x binning: shifts in 3 Å pixels
    cs["ctf/accel_kv"], cs["ctf/cs_mm"], cs["ctf/amp_contrast"] = 300, 2.7, 0.1
    cs["ctf/df1_A"], cs["ctf/df2_A"], cs["ctf/df_angle_rad"] = 12000, 11000, 0.5
    with open(tmp_path / "J5" / "particles.cs", "wb") as f:
        np.save(f, cs)
    p = read_cs(tmp_path / "J5" / "particles.cs")
    assert p.image_files == [str((tmp_path / "J1" / "imported" / "p.mrcs").resolve())]
    np.testing.assert_array_equal(p.image_index, np.arange(n)[::-1])
    np.testing.assert_allclose(p.rotations.numpy(), Rotation.from_rotvec(rv.astype(np.float32)).as_matrix(), atol=1e-6)
    np.testing.assert_allclose(p.shifts.numpy(), -shift * 2, atol=1e-5)
    np.testing.assert_allclose(p.ctf.defocus_angle.numpy(), 0.5)
    np.testing.assert_allclose(p.ctf.phase_shift.numpy(), 0.0)
    np.testing.assert_array_equal(p.extra["uid"], np.arange(n) + 1000)


def test_cryodrgn_pickles_follow_cryodrgn_conventions(tmp_path):
    """The pose pickle written from a STAR equals what cryoDRGN's parse_pose_star computes from it:
    rot = cryoDRGN's R_from_relion(angles) (= our Rᵀ), trans = rlnOrigin (px) / D; the CTF pickle
    rows are [D, Apix, U, V, angle °, kV, Cs, Q0, phase °] as its parse_ctf_star writes them."""
    import starfile

    stack = make_stack(tmp_path / "p.mrcs", n=12)
    p = random_particles(stack, n=12, seed=9)
    write_star(tmp_path / "p.star", p)
    df = starfile.read(tmp_path / "p.star", always_dict=True)["particles"]
    write_cryodrgn_poses(tmp_path / "poses.pkl", p)
    write_cryodrgn_ctf(tmp_path / "ctf.pkl", p)
    with open(tmp_path / "poses.pkl", "rb") as f:
        rot, trans = pickle.load(f)
    expect = np.stack([cryodrgn_R_from_relion(*row) for row in
                       df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()])
    np.testing.assert_allclose(rot, expect, atol=1e-5)
    np.testing.assert_allclose(rot, p.rotations.transpose(1, 2).numpy(), atol=1e-6)
    origin_px = df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / 1.5
    np.testing.assert_allclose(trans, origin_px / 16, atol=1e-6)
    with open(tmp_path / "ctf.pkl", "rb") as f:
        ctf = pickle.load(f)
    assert ctf.dtype == np.float32 and ctf.shape == (12, 9)
    np.testing.assert_allclose(ctf[:, 0], 16)
    np.testing.assert_allclose(ctf[:, 1], 1.5)
    np.testing.assert_allclose(ctf[:, 2], df["rlnDefocusU"], rtol=1e-6)
    np.testing.assert_allclose(ctf[:, 4], df["rlnDefocusAngle"], atol=1e-4)
    np.testing.assert_allclose(ctf[:, 5], p.ctf.voltage.numpy())
    np.testing.assert_allclose(ctf[:, 8], df["rlnPhaseShift"], atol=1e-4)
    # and reading them back is the inverse: R = rotᵀ, shift = −trans · D
    r, s = read_pose_pickle(tmp_path / "poses.pkl", 12, 16)
    torch.testing.assert_close(r, p.rotations, atol=1e-6, rtol=0)
    torch.testing.assert_close(s, p.shifts, atol=1e-5, rtol=0)


def test_cryodrgn_own_parsers_agree(tmp_path, cryodrgn_exe):
    """cryoDRGN 4.3.1's own ``parse_pose_star`` / ``parse_ctf_star`` on our STAR and ``parse_pose_csparc``
    on our .cs (run from its venv) give pickles that read back as the original poses, shifts and CTF."""
    stack = make_stack(tmp_path / "p.mrcs", n=15)
    p = random_particles(stack, n=15, seed=12, bfactor=False)
    p.image_index = np.arange(15)
    write_star(tmp_path / "p.star", p)
    write_cs(tmp_path / "p.cs", p)
    for argv in (["parse_pose_star", str(tmp_path / "p.star"), "-o", str(tmp_path / "star_poses.pkl")],
                 ["parse_ctf_star", str(tmp_path / "p.star"), "-o", str(tmp_path / "star_ctf.pkl")],
                 ["parse_pose_csparc", str(tmp_path / "p.cs"), "-D", "16", "-o", str(tmp_path / "cs_poses.pkl")]):
        done = subprocess.run([str(cryodrgn_exe), *argv], capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert done.returncode == 0, f"cryodrgn {argv[0]} failed: {done.stderr[-2000:]}"
    for poses in ("star_poses.pkl", "cs_poses.pkl"):
        q = read_cryodrgn(stack, tmp_path / poses, tmp_path / "star_ctf.pkl")
        assert_particles_close(p, q, ctf_fields=NO_B)


def test_ctf_pickle_for_a_larger_box_scales_the_pixel_size(tmp_path):
    """A CTF pickle made for D=32 at 1 Å/px used with a D=16 stack means 2 Å/px (cryoDRGN's
    downsampling rule)."""
    stack = make_stack(tmp_path / "p.mrcs", n=4, pixel_size=0.0 + 2.0)
    ctf = np.tile(np.array([32, 1.0, 1e4, 1e4, 0, 300, 2.7, 0.1, 0], dtype=np.float32), (4, 1))
    with open(tmp_path / "ctf.pkl", "wb") as f:
        pickle.dump(ctf, f)
    p = read_cryodrgn(stack, ctf_pkl=tmp_path / "ctf.pkl")
    assert p.pixel_size == pytest.approx(2.0) and p.rotations is None


def test_read_particles_dispatch_and_pickle_override(tmp_path):
    """read_particles picks the reader from the suffix; pickles given with a STAR replace its poses."""
    stack = make_stack(tmp_path / "p.mrcs", n=10)
    p = random_particles(stack, n=10, seed=2)
    p.image_index = np.arange(10)
    write_star(tmp_path / "p.star", p)
    write_cs(tmp_path / "p.cs", p)
    other = random_particles(stack, n=10, seed=4)
    write_cryodrgn_poses(tmp_path / "other.pkl", other)
    assert_particles_close(p, read_particles(tmp_path / "p.cs"))
    q = read_particles(tmp_path / "p.star", poses=tmp_path / "other.pkl")
    torch.testing.assert_close(q.rotations, other.rotations, atol=1e-6, rtol=0)
    torch.testing.assert_close(q.shifts, other.shifts, atol=1e-5, rtol=0)
    assert read_particles(stack).rotations is None
    with pytest.raises(InputError, match=r"p\.txt"):
        read_particles(tmp_path / "p.txt")


def test_pickle_with_code_is_refused(tmp_path):
    """A pickle that would run code when loaded is refused (InputError) and its code never runs."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump((Evil(), np.zeros((3, 2))), f)
    stack = make_stack(tmp_path / "p.mrcs", n=3)
    with pytest.raises(InputError, match=r"evil\.pkl"):
        read_cryodrgn(stack, tmp_path / "evil.pkl")
    assert not marker.exists()


def test_convert_writes_formats_and_never_overwrites_inputs(tmp_path):
    """convert(): STAR → .cs, STAR → poses.pkl + ctf.pkl; naming an input as output is refused
    and leaves it byte-identical; a CTF pickle from metadata without CTF is refused."""
    stack = make_stack(tmp_path / "p.mrcs", n=10)
    p = random_particles(stack, n=10, seed=6, bfactor=False)
    p.image_index = np.arange(10)
    star = write_star(tmp_path / "p.star", p)
    before = sha(star)
    _, written = convert(star, tmp_path / "p.cs")
    assert written == [tmp_path / "p.cs"]
    assert_particles_close(p, read_cs(tmp_path / "p.cs"), ctf_fields=NO_B)
    convert(star, tmp_path / "poses.pkl", ctf_out=tmp_path / "ctf.pkl")
    assert_particles_close(p, read_cryodrgn(stack, tmp_path / "poses.pkl", tmp_path / "ctf.pkl"), ctf_fields=NO_B)
    with pytest.raises(InputError, match="refusing to overwrite"):
        convert(star, star)
    assert sha(star) == before
    p.ctf = None
    write_star(tmp_path / "noctf.star", p)
    with pytest.raises(InputError, match="no CTF"):
        convert(tmp_path / "noctf.star", ctf_out=tmp_path / "c.pkl")
    assert not (tmp_path / "c.pkl").exists()
