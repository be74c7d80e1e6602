"""cryolens' image formation against relion_project (RELION 3.1.3): rotation convention, origin
sign, CTF (astigmatism, phase shift, B-factor) and the whole forward model read from a STAR file.

Measured with RELION 3.1.3 (Debian), D = 32, 1.5 Å/px, pad 2: cryolens' Fourier-slice projection
reproduces relion_project to a relative error of ~6e-7 (correlation 1 − 1e-8) — the same
oversampled trilinear slice with gridding correction; with the transposed matrix the correlation
is 0.28–0.60. RELION's CTF is reproduced to ~4e-8 relative error, including ``rlnPhaseShift`` with
the sign ``+φ`` inside the sine (``−φ`` gives a relative error of 1.1–2.0).
"""


import numpy as np
import pytest
import torch

from cryolens.bench import relion
from cryolens.imaging import CTFParams, ctf_2d, euler_to_matrix, fft2_centered, render_images
from cryolens.io.mrc import open_stack, write_volume
from cryolens.io.star import read_star

pytestmark = pytest.mark.relion

D = 32
PX = 1.5
# general Euler triples (rot, tilt, psi) in degrees, none near a gimbal lock or a symmetry
ANGLES = np.array([[10, 20, 30], [40, 70, -30], [-120, 135, 80], [200, 45, 170], [75, 100, -60],
                   [300, 160, 15], [33, 88, 250]], dtype=np.float64)


def _rotations(angles_deg, device="cpu"):
    a = torch.deg2rad(torch.as_tensor(angles_deg, dtype=torch.float64))
    return euler_to_matrix(a[:, 0], a[:, 1], a[:, 2]).to(device)


def _corr(a, b):
    """Per-image Pearson correlation of two ``(N, D, D)`` arrays."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def _rel(a, b):
    """Per-image relative error ‖a − b‖ / ‖b‖ (numpy or torch, real or complex)."""
    a, b = np.asarray(a), np.asarray(b)
    return np.linalg.norm((a - b).reshape(len(a), -1), axis=1) / np.linalg.norm(b.reshape(len(b), -1), axis=1)


def test_projection_matches_relion_project(smooth_volume, device):
    """R = Rz(rot) Ry(tilt) Rz(psi) (image → volume frame) projects like relion_project at seven
    general angle triples: correlation ≥ 0.999 and even the same values (relative error < 1e-4;
    measured ~6e-7), on every device."""
    ref = relion.project(smooth_volume, PX, ANGLES)
    ours = render_images(smooth_volume.float().to(device), _rotations(ANGLES, device).float()).cpu().numpy()
    assert _corr(ours, ref).min() >= 0.999
    assert _rel(ours, ref).max() < 1e-4


def test_transposed_rotation_does_not_match(smooth_volume):
    """The convention is sharp: RELION's own matrix A = Rᵀ used as cryolens' R gives projections
    that correlate < 0.9 with relion_project's at every triple (measured 0.28–0.60)."""
    ref = relion.project(smooth_volume, PX, ANGLES)
    wrong = render_images(smooth_volume, _rotations(ANGLES).transpose(-1, -2)).numpy()
    assert _corr(wrong, ref).max() < 0.9


def test_origin_sign(smooth_volume):
    """rlnOriginX/YAngst ≠ 0: relion_project's image equals cryolens' projection with
    shift = −origin / pixel_size (correlation ≥ 0.999, relative error < 1e-4); the opposite sign
    correlates < 0.9 (measured −0.02–0.58)."""
    angles = ANGLES[:5]
    origins = np.array([[3.0, 0.0], [0.0, -4.5], [2.2, 3.7], [-5.0, 1.1], [-2.5, -6.0]])  # Å
    ref = relion.project(smooth_volume, PX, angles, origins)
    rots = _rotations(angles)
    good = render_images(smooth_volume, rots, shifts=torch.as_tensor(-origins / PX)).numpy()
    bad = render_images(smooth_volume, rots, shifts=torch.as_tensor(origins / PX)).numpy()
    assert _corr(good, ref).min() >= 0.999
    assert _rel(good, ref).max() < 1e-4
    assert _corr(bad, ref).max() < 0.9


# (defocus U Å, defocus V Å, defocus angle °, phase shift °)
ASTIGMATIC = np.array([[10000, 10000, 0, 0], [15000, 12000, 30, 0], [12000, 18000, -50, 0],
                       [20000, 17000, 120, 0], [9000, 9500, 75, 0]], dtype=np.float64)
PHASE_PLATE = np.array([[9000, 9500, 75, 30], [14000, 11000, 20, 90], [11000, 11000, 0, -45],
                        [13000, 12000, 60, 150]], dtype=np.float64)


def _relion_ctf_pair(volume, cases, voltage=300.0, cs=2.7, q0=0.1, bfactor=None):
    """(FFT of relion_project without CTF, FFT of relion_project --ctf), float64, for ``cases``."""
    cols = {"rlnDefocusU": cases[:, 0], "rlnDefocusV": cases[:, 1], "rlnDefocusAngle": cases[:, 2],
            "rlnPhaseShift": cases[:, 3]}
    if bfactor is not None:
        cols["rlnCtfBfactor"] = bfactor
    angles = np.resize(ANGLES, (len(cases), 3))
    kw = dict(columns=cols, voltage=voltage, cs=cs, amplitude_contrast=q0)
    plain = relion.project(volume, PX, angles, **kw)
    with_ctf = relion.project(volume, PX, angles, ctf=True, **kw)
    f = fft2_centered(torch.as_tensor(plain, dtype=torch.float64))
    return f, fft2_centered(torch.as_tensor(with_ctf, dtype=torch.float64))


def _our_ctf(cases, voltage=300.0, cs=2.7, q0=0.1, bfactor=0.0, phase_sign=1.0, swap=False, angle_sign=1.0):
    u, v = (cases[:, 1], cases[:, 0]) if swap else (cases[:, 0], cases[:, 1])
    p = CTFParams.create(u, v, angle_sign * np.deg2rad(cases[:, 2]), voltage, cs, q0,
                         phase_sign * np.deg2rad(cases[:, 3]), bfactor, dtype=torch.float64)
    return ctf_2d(p, D, PX, dtype=torch.float64)


def test_ctf_with_astigmatism_matches_relion_project(smooth_volume):
    """FFT(plain relion_project) × cryolens' CTF = FFT(relion_project --ctf) for five defocus /
    astigmatism cases (relative error < 1e-5; measured ~4e-8). Controls: a negated defocus angle
    and swapped U/V do not match (relative error > 1e-2 for each astigmatic case)."""
    f, ref = _relion_ctf_pair(smooth_volume, ASTIGMATIC)
    assert _rel(f * _our_ctf(ASTIGMATIC), ref).max() < 1e-5
    astig = ASTIGMATIC[:, 0] != ASTIGMATIC[:, 1]
    oblique = astig & (ASTIGMATIC[:, 2] % 90 != 0)  # negating 0° or 90° changes nothing
    assert _rel(f * _our_ctf(ASTIGMATIC, angle_sign=-1), ref)[oblique].min() > 1e-2
    assert _rel(f * _our_ctf(ASTIGMATIC, swap=True), ref)[astig].min() > 1e-2


def test_phase_shift_sign_matches_relion_project(smooth_volume):
    """rlnPhaseShift φ (30°, 90°, −45°, 150°) enters RELION's CTF as sin(γ + φ), the sign cryolens
    uses (docs/CONVENTIONS.md): relative error < 1e-5 (measured ~4e-8). The opposite sign, sin(γ − φ),
    is far off (relative error > 0.5; measured 1.1–2.0)."""
    f, ref = _relion_ctf_pair(smooth_volume, PHASE_PLATE)
    assert _rel(f * _our_ctf(PHASE_PLATE), ref).max() < 1e-5
    assert _rel(f * _our_ctf(PHASE_PLATE, phase_sign=-1), ref).min() > 0.5


def test_ctf_optics_and_bfactor_match_relion_project(smooth_volume):
    """Other voltage / Cs / Q0 (200 kV, 2.0 mm, 0.07) and rlnCtfBfactor (50, 120 Å²) with the
    envelope exp(−B k² / 4): relative error < 1e-5; leaving the envelope out is off by > 1e-2."""
    cases = PHASE_PLATE[:2]
    b = np.array([50.0, 120.0])
    f, ref = _relion_ctf_pair(smooth_volume, cases, 200.0, 2.0, 0.07, bfactor=b)
    assert _rel(f * _our_ctf(cases, 200.0, 2.0, 0.07, bfactor=b), ref).max() < 1e-5
    assert _rel(f * _our_ctf(cases, 200.0, 2.0, 0.07), ref).min() > 1e-2


def test_forward_model_from_star_matches_relion_project(smooth_volume, tmp_path, device):
    """The whole chain: a STAR file (angles, origins, astigmatic CTF with phase shift and B-factor)
    read by cryolens.io.star.read_star and rendered by cryolens' forward model (slice, shift, CTF)
    equals relion_project --ctf on the same STAR (relative error < 1e-4)."""
    n = 6
    rng = np.random.default_rng(0)
    angles = np.resize(ANGLES, (n, 3))
    origins = rng.uniform(-4, 4, (n, 2))
    du = rng.uniform(8000, 20000, n)
    cols = {"rlnDefocusU": du, "rlnDefocusV": du - rng.uniform(0, 2000, n),
            "rlnDefocusAngle": rng.uniform(-180, 180, n), "rlnPhaseShift": rng.uniform(0, 120, n),
            "rlnCtfBfactor": rng.uniform(0, 80, n)}
    write_volume(tmp_path / "map.mrc", smooth_volume.numpy(), PX)
    relion.write_particles_star(tmp_path / "angles.star", PX, D, angles, origins, cols, voltage=300, cs=2.7,
                                amplitude_contrast=0.1)
    relion.run_relion("relion_project", ["--i", "map.mrc", "--o", "proj", "--ang", "angles.star", "--angpix", PX,
                                         "--ctf"], tmp_path)
    particles = read_star(tmp_path / "proj.star")
    ref = np.array(open_stack(tmp_path / "proj.mrcs"))
    ours = render_images(smooth_volume.float().to(device), particles.rotations.to(device),
                         particles.shifts.to(device), particles.ctf.to(device), particles.pixel_size).cpu().numpy()
    assert _rel(ours, ref).max() < 1e-4
