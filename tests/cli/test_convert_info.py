"""`cryolens convert` and `cryolens info`, run in-process: outputs that read back right, and bad
inputs that end with exit code 2, one stderr line, no traceback and the input unchanged."""

import hashlib
import pickle

import mrcfile
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

import cryolens.cli.main as cli
from cryolens.imaging.ctf import CTFParams
from cryolens.io.cryodrgn import read_cryodrgn
from cryolens.io.cryosparc import read_cs
from cryolens.io.mrc import write_stack, write_volume
from cryolens.io.particles import Particles
from cryolens.io.star import read_star, write_star


@pytest.fixture(autouse=True)
def _only_these_commands(monkeypatch):
    """Build the parser from the two commands under test only (the others may not exist yet)."""
    monkeypatch.setattr(cli, "COMMANDS", ["convert", "info"])


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dataset(tmp_path, n=12, d=16, px=1.5):
    rng = np.random.default_rng(0)
    stack = write_stack(tmp_path / "particles.mrcs", rng.normal(size=(n, d, d)), px)
    p = Particles(px, d, [str(stack.resolve())], np.zeros(n), np.arange(n),
                  torch.as_tensor(Rotation.random(n, random_state=0).as_matrix(), dtype=torch.float32),
                  torch.as_tensor(rng.uniform(-3, 3, (n, 2)), dtype=torch.float32),
                  CTFParams.create(rng.uniform(1e4, 2e4, n), rng.uniform(1e4, 2e4, n), rng.uniform(0, 3, n)),
                  {"rlnRandomSubset": np.arange(n) % 2 + 1})
    return p, write_star(tmp_path / "particles.star", p), stack


def _run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_info_on_particles_map_and_pickle(tmp_path, capsys):
    """info reports N, box, pixel size, what metadata is present and the stacks for a STAR file;
    shape, pixel size and statistics for a map; the kind of a cryoDRGN pickle."""
    p, star, stack = _dataset(tmp_path)
    rc, out, _ = _run(["info", star], capsys)
    assert rc == 0
    assert "particles:  12" in out and "16 px" in out and "1.5000 Å" in out
    assert "rotations:  yes" in out and "shifts:     yes" in out and "defocus" in out
    assert str(stack.resolve()) in out and "(12 images)" in out and "rlnRandomSubset" in out
    rc, out, _ = _run(["info", stack, "--check"], capsys)
    assert rc == 0 and "rotations:  no" in out and "CTF:        no" in out and "all 12 read, finite" in out
    vol = np.zeros((16, 16, 16), np.float32)
    vol[8, 8, 8] = 4.0
    write_volume(tmp_path / "map.mrc", vol, 2.0)
    rc, out, _ = _run(["info", tmp_path / "map.mrc"], capsys)
    assert rc == 0 and "16 x 16 x 16" in out and "2.0000 Å" in out and "max 4" in out
    with open(tmp_path / "ctf.pkl", "wb") as f:
        pickle.dump(np.tile(np.array([16, 1.5, 1e4, 1e4, 0, 300, 2.7, 0.1, 0], np.float32), (12, 1)), f)
    rc, out, _ = _run(["info", tmp_path / "ctf.pkl"], capsys)
    assert rc == 0 and "cryoDRGN CTF pickle: 12 images" in out


def test_info_star_without_torch_describes_what_read_star_reads(tmp_path):
    """The torch-free table of a STAR file (what ``info`` describes) holds what :func:`read_star` reads: the
    same lines from both, rotations from its angles by R = Rz(rot) Ry(tilt) Rz(psi), shifts, CTF and extra
    columns equal to the Particles' (which round-trip the written ones)."""
    from cryolens.cli.info import describe_particles
    from cryolens.imaging.rotations import euler_to_matrix
    from cryolens.io.star_table import read_star_table

    p, star, _ = _dataset(tmp_path)
    table, particles = read_star_table(star), read_star(star)
    assert describe_particles(table) == describe_particles(particles)
    rot, tilt, psi = (torch.as_tensor(np.deg2rad(a)) for a in table.angles_deg)
    torch.testing.assert_close(euler_to_matrix(rot, tilt, psi).float(), p.rotations, atol=1e-5, rtol=0)
    np.testing.assert_allclose(table.shifts, p.shifts.numpy(), atol=1e-5)
    for k, v in p.ctf.as_dict().items():
        np.testing.assert_allclose(table.ctf[k], v.double().numpy(), rtol=1e-6, atol=1e-6, err_msg=k)
    assert list(table.extra) == ["rlnRandomSubset"] and (table.extra["rlnRandomSubset"] == np.arange(12) % 2 + 1).all()
    assert (table.image_index == np.arange(12)).all() and (table.pixel_size, table.box_size) == (1.5, 16)


def test_convert_star_cs_pickles_and_back(tmp_path, capsys):
    """convert STAR → .cs → poses.pkl + ctf.pkl → STAR through the CLI keeps poses and CTF (1e-5)."""
    p, star, stack = _dataset(tmp_path)
    assert _run(["convert", star, "--out", tmp_path / "p.cs"], capsys)[0] == 0
    rc, out, _ = _run(["convert", tmp_path / "p.cs", "--out", tmp_path / "poses.pkl",
                       "--ctf-out", tmp_path / "ctf.pkl"], capsys)
    assert rc == 0 and "wrote" in out and "ctf.pkl" in out
    rc, _, _ = _run(["convert", stack, "--poses", tmp_path / "poses.pkl", "--ctf", tmp_path / "ctf.pkl",
                     "--out", tmp_path / "back.star"], capsys)
    assert rc == 0
    for q in (read_cs(tmp_path / "p.cs"), read_cryodrgn(stack, tmp_path / "poses.pkl", tmp_path / "ctf.pkl"),
              read_star(tmp_path / "back.star")):
        torch.testing.assert_close(q.rotations, p.rotations, atol=1e-5, rtol=0)
        torch.testing.assert_close(q.shifts, p.shifts, atol=1e-4, rtol=0)
        torch.testing.assert_close(q.ctf.defocus_u, p.ctf.defocus_u, rtol=1e-5, atol=0)
        torch.testing.assert_close(q.ctf.defocus_angle, p.ctf.defocus_angle, atol=1e-5, rtol=0)


def _bad_inputs(tmp_path):
    """(argv, file that must stay unchanged, text the message must hold) for each kind of bad input."""
    cases = []
    junk = tmp_path / "junk.mrc"
    junk.write_bytes(np.random.default_rng(1).bytes(4096))
    cases.append((["info", junk], junk, "not a readable MRC file"))
    vol = write_volume(tmp_path / "cut.mrc", np.zeros((16, 16, 16), np.float32), 1.0)
    vol.write_bytes(vol.read_bytes()[:-500])
    cases.append((["info", vol], vol, "truncated"))
    with mrcfile.new(tmp_path / "odd.mrc") as m:
        m.set_data(np.zeros((15, 15, 15), np.float32))
    cases.append((["info", tmp_path / "odd.mrc"], tmp_path / "odd.mrc", "box size 15 is odd"))
    p, star, stack = _dataset(tmp_path)
    p.image_index[4] = 40
    past = write_star(tmp_path / "past.star", p)
    cases.append((["info", past], past, "row 5 refers to image 41"))
    cases.append((["convert", past, "--out", tmp_path / "x.cs"], past, "row 5 refers to image 41"))
    nocol = tmp_path / "nocol.star"
    nocol.write_text("data_particles\n\nloop_\n_rlnAngleRot #1\n1.0\n2.0\n")
    cases.append((["convert", nocol, "--out", tmp_path / "y.cs"], nocol, "missing column rlnImageName"))
    images = np.zeros((5, 16, 16), np.float32)
    images[3, 2, 2] = np.nan
    nan = write_stack(tmp_path / "nan.mrcs", images, 1.0)
    cases.append((["info", nan, "--check"], nan, "image 3 (0-based) has NaN"))
    cases.append((["info", tmp_path / "missing.star"], None, "missing.star: file not found"))
    cases.append((["convert", star, "--out", star], star, "refusing to overwrite"))
    return cases


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    """Each bad input: exit code 2, exactly one stderr line naming the file and the problem, no
    traceback, and the input file byte-identical afterwards."""
    for argv, path, text in _bad_inputs(tmp_path):
        before = _sha(path) if path is not None else None
        rc, out, err = _run(argv, capsys)
        lines = err.strip().splitlines()
        assert rc == 2, (argv, err)
        assert len(lines) == 1, (argv, err)
        assert "Traceback" not in err
        assert text in lines[0], (argv, lines[0])
        name = path.name if path is not None else "missing.star"
        assert name in lines[0]
        if path is not None:
            assert _sha(path) == before, argv
