"""The RELION wrappers themselves (cryolens.bench.relion): clear errors, parsing, STAR writing.
Only the last test needs RELION installed."""

import numpy as np
import pytest
import torch

from cryolens.bench import relion
from cryolens.imaging import euler_to_matrix
from cryolens.io.mrc import write_stack
from cryolens.io.star import read_star

FSC_TEXT = """
# version 30001

data_fsc

loop_
_rlnSpectralIndex #1
_rlnResolution #2
_rlnAngstromResolution #3
_rlnFourierShellCorrelation #4
           0     0.001001   999.000000     1.000000
           1     0.020833    48.000000     0.629236
           2     0.041667    24.000000     -0.00258
"""


def test_missing_program_raises_a_clear_error(monkeypatch):
    """Without RELION on PATH the wrappers raise RelionNotFound naming the program and how to install it."""
    monkeypatch.setenv("PATH", "/nonexistent")
    assert relion.missing_programs() == list(relion.PROGRAMS)
    with pytest.raises(relion.RelionNotFound, match="relion_image_handler not found.*apt-get install"):
        relion.fsc(np.zeros((8, 8, 8)), np.zeros((8, 8, 8)))


def test_parse_fsc_table():
    """RELION's data_fsc table (as printed by relion_image_handler --fsc) → the FSC column by shell."""
    assert np.allclose(relion.parse_fsc_table(FSC_TEXT), [1.0, 0.629236, -0.00258])
    with pytest.raises(relion.RelionError):
        relion.parse_fsc_table("no table here")


def test_star_writer_round_trips_through_cryolens_reader(tmp_path):
    """write_particles_star (RELION conventions) read by cryolens.io.star: R = Rz(rot) Ry(tilt) Rz(psi),
    shift = −origin / pixel size, CTF angles in radians."""
    ang = np.array([[10.0, 20.0, 30.0], [-120.0, 135.0, 80.0]])
    orig = np.array([[3.0, -1.5], [0.0, 4.5]])
    relion.write_particles_star(tmp_path / "p.star", 1.5, 32, ang, orig,
                                {"rlnDefocusU": [12000, 15000], "rlnDefocusV": [11000, 15000],
                                 "rlnDefocusAngle": [30.0, 0.0], "rlnPhaseShift": [90.0, 0.0]},
                                image_names=["1@s.mrcs", "2@s.mrcs"])
    write_stack(tmp_path / "s.mrcs", np.zeros((2, 32, 32), np.float32), 1.5)
    p = read_star(tmp_path / "p.star")
    a = torch.deg2rad(torch.tensor(ang))
    assert torch.allclose(p.rotations.double(), euler_to_matrix(a[:, 0], a[:, 1], a[:, 2]), atol=1e-6)
    assert np.allclose(p.shifts.numpy(), -orig / 1.5, atol=1e-6)
    assert np.allclose(p.ctf.phase_shift.numpy(), [np.pi / 2, 0], atol=1e-6)
    assert p.pixel_size == 1.5 and p.box_size == 32


@pytest.mark.relion
def test_failing_program_raises_relion_error(tmp_path):
    """A RELION program that fails (here: a map that does not exist) raises RelionError with its output."""
    with pytest.raises(relion.RelionError, match="relion_image_handler"):
        relion.run_relion("relion_image_handler", ["--i", "missing.mrc", "--fsc", "missing2.mrc"], tmp_path)
