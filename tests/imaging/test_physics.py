"""Physics of the image formation model, each checked against an independent computation."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryolens.imaging.fft import fft2_centered_real
from cryolens.imaging import (CTFParams, ctf_2d, extract_slices, fft2_centered, gaussian_projection,
                              gaussian_projection_ft, gaussian_volume, hartley2, hartley3, ihartley2,
                              insert_slices, matrix_to_euler, euler_to_matrix, matrix_to_quaternion,
                              matrix_to_rotvec, phase_shift, prepare_volume_ft, quaternion_to_matrix,
                              random_rotations, render_images, rotvec_to_matrix, shift_images,
                              geodesic_distance, colored_noise, add_noise_at_snr, rfft2_centered,
                              irfft2_centered, fft3_centered, ifft3_centered, shift_volume,
                              center_of_mass, center_volume)
from cryolens.imaging.shift import center_volumes
from cryolens.imaging.grids import coord_grid_3d, freq_grid_2d, shell_index_2d
from cryolens.imaging.ctf import electron_wavelength

D = 32
CENTERS = torch.tensor([[3.0, -2.0, 5.0], [-6.0, 4.0, -1.0], [0.0, 7.0, 2.0]])
SIGMAS = torch.tensor([2.0, 3.0, 2.5])
AMPS = torch.tensor([1.0, 0.7, 1.2])


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_fourier_slice_projection_matches_analytic_gaussian(device):
    """Fourier-slice projection of a voxelised Gaussian mixture = its closed-form projection;
    the interpolation error falls as the oversampling grows (pad 2 → 4)."""
    c, s, a = CENTERS.to(device), SIGMAS.to(device), AMPS.to(device)
    vol = gaussian_volume(c, s, a, D)
    rots = random_rotations(6, device=device)
    ref = gaussian_projection(c, s, a, rots, D)
    err2 = _rel(render_images(vol, rots, pad=2), ref)
    err4 = _rel(render_images(vol, rots, pad=4), ref)
    assert err2 < 0.04
    assert err4 < 0.5 * err2


def test_real_space_projection_matches_analytic_gaussian(device):
    """Rotate-and-sum projection of the voxelised mixture = the closed-form projection."""
    c, s, a = CENTERS.to(device), SIGMAS.to(device), AMPS.to(device)
    vol = gaussian_volume(c, s, a, D)
    rots = random_rotations(6, device=device)
    assert _rel(render_images(vol, rots, projector="real"), gaussian_projection(c, s, a, rots, D)) < 0.02


def test_analytic_fourier_transform_of_gaussian_projection():
    """The closed-form 2D transform equals the centered DFT of the closed-form image."""
    rots = random_rotations(3)
    img = gaussian_projection(CENTERS.double(), SIGMAS.double(), AMPS.double(), rots.double(), D)
    ft = gaussian_projection_ft(CENTERS.double(), SIGMAS.double(), AMPS.double(), rots.double(), D)
    assert _rel(fft2_centered(img), ft) < 1e-3  # tails cut by the box: ~2e-4


def test_slice_insert_adjoint():
    """<P v, u> = <v, Pᵀ u> in float64 for complex data, with oversampling."""
    g = torch.Generator().manual_seed(1)
    v = torch.randn(2 * D, 2 * D, 2 * D, dtype=torch.complex128, generator=g)
    u = torch.randn(7, D, D, dtype=torch.complex128, generator=g)
    rots = random_rotations(7, generator=g, dtype=torch.float64)
    lhs = (extract_slices(v, rots, D) * u.conj()).sum()
    data, _ = insert_slices(u, rots, 2 * D)
    rhs = (v * data.conj()).sum()
    assert abs(lhs - rhs) < 1e-9 * abs(lhs)


def test_hermitian_half_slice_equals_full_slice():
    """For a real volume, interpolating the kx ≥ 0 half and filling by Friedel symmetry gives
    exactly the fully interpolated slice (float64)."""
    v = torch.randn(D, D, D, dtype=torch.float64)
    vft = prepare_volume_ft(v)
    rots = random_rotations(9, dtype=torch.float64)
    full = extract_slices(vft, rots, D)
    half = extract_slices(vft, rots, D, hermitian=True)
    assert float((full - half).abs().max()) < 1e-9 * float(full.abs().max())


def test_slice_values_at_chosen_pixels_equal_the_full_slice_there():
    """Interpolating only some pixels (all shells up to Nyquist, a random subset, a low-shell disc as
    the likelihood uses) gives the full slice's values there (float64), and the likelihood helper
    takes that path for a volume slicer."""
    from cryolens.imaging.slice import extract_points_from_sampling_volume, sampling_volume
    from cryolens.inference.likelihood import slice_values_at, used_pixels, volume_slicer

    v = torch.randn(D, D, D, dtype=torch.float64)
    vft = prepare_volume_ft(v)
    rots = random_rotations(7, dtype=torch.float64)
    full = extract_slices(vft, rots, D).flatten(-2)
    g = torch.Generator().manual_seed(3)
    for pixels in (torch.arange(D * D), torch.randperm(D * D, generator=g)[:50], used_pixels(D, 4)):
        got = extract_points_from_sampling_volume(sampling_volume(vft), rots, D, pixels)
        assert got.shape == (7, len(pixels))
        assert float((got - full[:, pixels]).abs().max()) < 1e-9 * float(full.abs().max())
    slicer = volume_slicer(vft, D)
    called = []
    slicer.at_pixels = lambda r, p, f=slicer.at_pixels: called.append(1) or f(r, p)
    pix = used_pixels(D, 5)
    torch.testing.assert_close(slice_values_at(slicer, rots, pix), full[:, pix])
    assert called


def test_hermitian_half_insertion_equals_full_insertion():
    """Transforms of real images: scattering the kx ≥ 0 half and completing by symmetry gives the
    same data and weights as scattering every pixel (float64), everywhere inside the Nyquist sphere.
    (On the sphere itself the two differ by design: the −Nyquist samples (0, −½) and (−½, 0) have no
    +Nyquist partner in a D×D slice; the half path spreads them symmetrically over ±k.)"""
    g = torch.Generator().manual_seed(4)
    imgs = torch.randn(6, D, D, dtype=torch.float64, generator=g)
    sl = fft2_centered(imgs)
    w = ctf_2d(CTFParams.create([9000.0] * 6, [8000.0] * 6, 0.4), D, 1.5, dtype=torch.float64) ** 2
    rots = random_rotations(6, generator=g, dtype=torch.float64)
    d_full, w_full = insert_slices(sl, rots, 2 * D, weights=w)
    d_half, w_half = insert_slices(sl, rots, 2 * D, weights=w, hermitian=True)
    inside = coord_grid_3d(2 * D).norm(dim=-1) < D - 2  # padded-grid voxels clear of the Nyquist shell
    assert float((d_full - d_half)[inside].abs().max()) < 1e-9 * float(d_full.abs().max())
    assert float((w_full - w_half)[inside].abs().max()) < 1e-9 * float(w_full.abs().max())


def test_shared_scatter_equals_one_stack_at_a_time():
    """Several slice stacks scattered along the same rotations with one trilinear geometry
    (scatter_slices_shared, e.g. one stack per class) give, for each, exactly what scatter_slices
    gives alone (float64)."""
    from cryolens.imaging.slice import finish_staging, scatter_slices, scatter_slices_shared, staging_grid

    g = torch.Generator().manual_seed(9)
    rots = random_rotations(5, generator=g, dtype=torch.float64)
    sls = [fft2_centered(torch.randn(5, D, D, dtype=torch.float64, generator=g)) for _ in range(3)]
    wts = [torch.rand(5, D, D, dtype=torch.float64, generator=g) for _ in range(3)]
    shared = [staging_grid(2 * D, 3, dtype=torch.float64) for _ in range(3)]
    scatter_slices_shared(shared, sls, rots, 2 * D, wts, hermitian=True)
    for k in range(3):
        alone = staging_grid(2 * D, 3, dtype=torch.float64)
        scatter_slices(alone, sls[k], rots, 2 * D, wts[k], hermitian=True)
        torch.testing.assert_close(shared[k], alone, rtol=1e-12, atol=0)
        assert float(finish_staging(alone, 2 * D)[1].abs().max()) > 0


def test_centred_delta_is_rotation_invariant(device):
    """A delta at the box centre has a flat transform: every central slice is 1 (100 rotations)."""
    vol = torch.zeros(D, D, D, device=device)
    vol[D // 2, D // 2, D // 2] = 1.0
    rots = random_rotations(100, device=device)
    slices = extract_slices(prepare_volume_ft(vol, pad=2, gridding_correction=False), rots, D)
    inside = freq_grid_2d(D, device=device).norm(dim=-1) <= 0.5
    assert torch.allclose(slices[:, inside], torch.ones_like(slices[:, inside]), atol=1e-5)
    img = render_images(vol, rots, projector="real")
    # rotate-and-sum spreads a delta over its trilinear neighbours (no exact invariant), but
    # the peak stays at the image centre for every rotation
    assert bool((img.flatten(1).argmax(1) == (D // 2) * D + D // 2).all())


def test_insert_accumulates_weights_on_the_slice_plane():
    """Inserting the identity pose puts all weight on the kz = 0 plane (weights sum to pixels inside Nyquist)."""
    slices = torch.ones(1, D, D, dtype=torch.complex64)
    data, weight = insert_slices(slices, torch.eye(3)[None], D)
    inside = int((freq_grid_2d(D).norm(dim=-1) <= 0.5).sum())
    assert abs(float(weight.sum()) - inside) < 1e-3
    assert float(weight[D // 2].sum()) == pytest.approx(inside, abs=1e-3)


def _ctf_reference_f64(d, apix, du, dv, ang, kv, cs, q0, phase, bfac):
    """CTF written independently: √(1−Q0²)·sin(χ+φ) + Q0·cos(χ+φ), numpy float64."""
    k = (np.arange(d) - d // 2) / (d * apix)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    s2 = kx**2 + ky**2
    v = kv * 1000.0
    lam = 12.2643247 / np.sqrt(v * (1 + 0.978466e-6 * v))
    az = np.arctan2(ky, kx)
    dfz = (du + dv) / 2 + (du - dv) / 2 * np.cos(2 * (az - ang))
    chi = np.pi * lam * dfz * s2 - np.pi / 2 * cs * 1e7 * lam**3 * s2**2
    return (np.sqrt(1 - q0**2) * np.sin(chi + phase) + q0 * np.cos(chi + phase)) * np.exp(-bfac * s2 / 4)


@pytest.mark.parametrize("case", [
    (15000, 15000, 0.0, 300, 2.7, 0.1, 0.0, 0.0),
    (12000, 18000, 0.6, 300, 2.7, 0.07, 0.0, 0.0),
    (20000, 17000, -1.1, 200, 2.0, 0.1, math.radians(90), 50.0),
    (9000, 9500, 2.0, 120, 1.4, 0.2, math.radians(30), 10.0),
])
def test_ctf_matches_float64_reference(case, device):
    """RELION's CTF (astigmatism, phase shift, B-factor) equals an independent float64 formula."""
    du, dv, ang, kv, cs, q0, ph, b = case
    params = CTFParams.create(du, dv, ang, kv, cs, q0, ph, b, device=device)
    ours = ctf_2d(params, 64, 1.3)[0].cpu().double().numpy()
    ref = _ctf_reference_f64(64, 1.3, du, dv, ang, kv, cs, q0, ph, b)
    assert np.abs(ours - ref).max() < 1e-5
    assert ours[32, 32] == pytest.approx(math.sin(ph + math.asin(q0)), abs=1e-6)  # CTF(0) = +Q0 when φ = 0


def test_ctf_matches_torch_ctf():
    """torch-ctf 0.6.0 (an outside implementation) agrees: defocus in µm, astigmatism (U−V)/2, U ≥ V."""
    torch_ctf = pytest.importorskip("torch_ctf")
    du, dv, ang = 18000.0, 14000.0, 0.7
    ours = ctf_2d(CTFParams.create(du, dv, ang, 300, 2.7, 0.1), 64, 1.2)[0]
    theirs = torch_ctf.calculate_ctf_2d(
        defocus=(du + dv) / 2e4, astigmatism=(du - dv) / 2e4, astigmatism_angle=math.degrees(ang),
        voltage=300, spherical_aberration=2.7, amplitude_contrast=0.1, phase_shift=0, pixel_size=1.2,
        image_shape=(64, 64), rfft=False, fftshift=True)
    theirs = theirs.reshape(64, 64).to(ours.dtype)
    assert np.corrcoef(ours.flatten().numpy(), theirs.flatten().numpy())[0, 1] > 0.99999


def test_electron_wavelength_at_300kv():
    """λ(300 kV) = 0.019687 Å (textbook value)."""
    assert float(electron_wavelength(300.0)) == pytest.approx(0.019687, abs=2e-6)


def test_shift_moves_gaussian_by_the_given_pixels(device):
    """Shifting a projection by s equals the closed-form projection of the mixture moved by (s, 0)."""
    c, s, a = CENTERS.to(device).double(), SIGMAS.to(device).double(), AMPS.to(device).double()
    rot = torch.eye(3, device=device, dtype=torch.float64)[None]
    img = gaussian_projection(c, s, a, rot, D)
    shift = torch.tensor([[2.5, -1.25]], device=device, dtype=torch.float64)
    moved = gaussian_projection(c + torch.cat([shift[0], shift.new_zeros(1)]), s, a, rot, D)
    assert _rel(shift_images(img, shift), moved) < 1e-3


def test_shift_volume_moves_gaussians_and_equals_roll_for_whole_voxels(device):
    """shift_volume by (dz, dy, dx) = the closed-form mixture with centres moved by (dx, dy, dz); an
    integer shift is exactly torch.roll."""
    c, s, a = CENTERS.to(device).double(), SIGMAS.to(device).double(), AMPS.to(device).double()
    vol = gaussian_volume(c, s, a, D)
    dz, dy, dx = 0.4, -1.3, 2.25
    moved = gaussian_volume(c + torch.tensor([dx, dy, dz], device=device, dtype=torch.float64), s, a, D)
    assert _rel(shift_volume(vol, (dz, dy, dx)), moved) < 1e-3
    assert torch.allclose(shift_volume(vol, (2, -3, 1)), torch.roll(vol, (2, -3, 1), dims=(0, 1, 2)), atol=1e-10)


def test_center_volume_moves_the_centre_of_mass_to_the_box_centre(device):
    """A mixture's centre of mass is the amplitude-weighted mean of its centres (closed form, each
    Gaussian's integral ∝ a σ³); center_volume moves it to the box centre and returns that shift."""
    c, s, a = CENTERS.to(device).double(), SIGMAS.to(device).double(), AMPS.to(device).double()
    vol = gaussian_volume(c, s, a, D)
    mass = a * s ** 3
    want_xyz = (mass[:, None] * c).sum(0) / mass.sum()
    assert torch.allclose(center_of_mass(vol), want_xyz.flip(0), atol=0.05)
    centred, shift = center_volume(vol)
    assert torch.allclose(shift, -want_xyz.flip(0), atol=0.05)
    assert float(center_of_mass(centred).abs().max()) < 0.02
    assert _rel(centred, gaussian_volume(c - want_xyz, s, a, D)) < 5e-3


def test_an_emptied_class_restarts_as_the_mean_of_the_centred_others():
    """center_volumes: two off-centre maps are centred one by one; a map with no positive density (an
    emptied ab initio class) becomes their mean; all empty is an error."""
    c, s, a = CENTERS.double(), SIGMAS.double(), AMPS.double()
    one, two = gaussian_volume(c, s, a, D), gaussian_volume(c + 2.0, s, a, D)
    out = center_volumes(torch.stack([one, -one.abs(), two]))
    first, second = center_volume(one)[0], center_volume(two)[0]
    assert torch.equal(out[0], first) and torch.equal(out[2], second)
    assert torch.allclose(out[1], 0.5 * (first + second))
    with pytest.raises(ValueError, match="no map"):
        center_volumes(torch.zeros(2, D, D, D))


def test_phase_shift_round_trip(device):
    """A shift followed by its negative is the identity."""
    x = fft2_centered(torch.randn(3, D, D, device=device))
    s = torch.randn(3, 2, device=device) * 3
    assert torch.allclose(phase_shift(phase_shift(x, s), -s), x, atol=1e-4)


def test_fft_layout_and_hartley_against_numpy():
    """Centered FFT puts frequency 0 at D//2 and agrees with numpy; Hartley = Re − Im, self-inverse."""
    x = torch.randn(2, 16, 16, dtype=torch.float64)
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1))), axes=(-2, -1))
    assert np.allclose(fft2_centered(x).numpy(), ref)
    assert np.allclose(hartley2(x).numpy(), ref.real - ref.imag)
    assert torch.allclose(ihartley2(hartley2(x)), x)
    v = torch.randn(8, 8, 8, dtype=torch.float64)
    assert torch.allclose(ifft3_centered(fft3_centered(v)).real, v)
    assert torch.allclose(hartley3(hartley3(v)) / 512, v)
    assert torch.allclose(irfft2_centered(rfft2_centered(x), 16), x)
    full = fft2_centered(x)
    half = rfft2_centered(x)  # columns kx = 0 .. D/2; kx = D/2 aliases the centered index 0
    assert torch.allclose(half[..., :8], full[..., 8:])
    assert torch.allclose(half[..., 8], full[..., 0])
    for d in (16, 10):  # the real-input transform from the half one, against numpy (float64)
        y = torch.randn(3, d, d, dtype=torch.float64)
        ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(y.numpy(), axes=(-2, -1))), axes=(-2, -1))
        assert np.abs(fft2_centered_real(y).numpy() - ref).max() < 1e-12 * np.abs(ref).max()


def test_weighted_mean_rotation_matches_scipy():
    """The chordal mean of weighted rotations per group equals scipy's Rotation.mean (the same
    objective, min Σ w‖R − R_i‖², solved there by the quaternion eigenvector), and an empty group gives
    the identity."""
    from cryolens.imaging.rotations import weighted_mean_rotation

    g = torch.Generator().manual_seed(2)
    centres = random_rotations(3, generator=g, dtype=torch.float64)
    groups = torch.tensor([0] * 7 + [2] * 5)
    spread = torch.as_tensor(Rotation.from_rotvec(0.3 * torch.randn(12, 3, generator=g, dtype=torch.float64).numpy())
                             .as_matrix())
    rots = centres[groups] @ spread
    w = torch.rand(12, generator=g, dtype=torch.float64)
    mean = weighted_mean_rotation(rots, w, groups, 3)
    for k in (0, 2):
        m = groups == k
        want = Rotation.from_matrix(rots[m].numpy()).mean(weights=w[m].numpy()).as_matrix()
        assert np.allclose(mean[k].numpy(), want, atol=1e-10)
    assert torch.allclose(mean[1], torch.eye(3, dtype=torch.float64))
    assert torch.allclose(mean @ mean.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(3, 3, 3), atol=1e-12)


def test_rotations_match_scipy():
    """Euler ZYZ (RELION), rotation vectors (cryoSPARC) and quaternions agree with scipy."""
    g = torch.Generator().manual_seed(3)
    rots = random_rotations(50, generator=g, dtype=torch.float64)
    sp = Rotation.from_matrix(rots.numpy())
    rot, tilt, psi = matrix_to_euler(rots)
    assert np.allclose(Rotation.from_euler("ZYZ", np.stack([rot, tilt, psi], -1)).as_matrix(), rots.numpy())
    assert np.allclose(euler_to_matrix(rot, tilt, psi).numpy(), rots.numpy())
    assert np.allclose(matrix_to_rotvec(rots).numpy(), sp.as_rotvec(), atol=1e-9)
    assert np.allclose(rotvec_to_matrix(torch.from_numpy(sp.as_rotvec())).numpy(), rots.numpy())
    q = sp.as_quat()  # scipy: (x, y, z, w)
    q = np.where(q[:, 3:] < 0, -q, q)
    assert np.allclose(matrix_to_quaternion(rots).numpy(), np.concatenate([q[:, 3:], q[:, :3]], 1), atol=1e-9)
    assert torch.allclose(quaternion_to_matrix(matrix_to_quaternion(rots)), rots)
    assert torch.allclose(torch.linalg.det(rots), torch.ones(50, dtype=torch.float64))


def test_euler_gimbal_lock_round_trip():
    """tilt = 0 and tilt = π still round-trip to the same matrix."""
    for tilt in (0.0, math.pi):
        r = euler_to_matrix(torch.tensor(0.4, dtype=torch.float64), torch.tensor(tilt, dtype=torch.float64),
                            torch.tensor(1.1, dtype=torch.float64))
        assert torch.allclose(euler_to_matrix(*matrix_to_euler(r)), r, atol=1e-9)


def test_random_rotations_are_uniform():
    """Haar-uniform rotations: E[R] = 0 and the angle density ∝ (1 − cos θ) has mean π/2 + 2/π."""
    rots = random_rotations(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert rots.mean(0).abs().max() < 0.02
    ang = geodesic_distance(torch.eye(3, dtype=torch.float64).expand_as(rots), rots)
    assert float(ang.mean()) == pytest.approx(math.pi / 2 + 2 / math.pi, abs=0.02)


def test_noise_hits_target_snr():
    """White noise: signal variance / noise variance = requested SNR."""
    sig = torch.randn(200, D, D) * 3
    noisy, sigma = add_noise_at_snr(sig, 0.1, generator=torch.Generator().manual_seed(0))
    measured = float(sig.var() / (noisy - sig).var())
    assert measured == pytest.approx(0.1, rel=0.02)


def test_colored_noise_at_snr():
    """Coloured noise added at a target SNR has the variance that SNR asks for."""
    sig = torch.randn(300, D, D) * 2
    spec = torch.linspace(3.0, 0.5, D // 2 + 1)
    noisy, sigma = add_noise_at_snr(sig, 0.05, generator=torch.Generator().manual_seed(1), spectrum=spec)
    assert float(sig.var() / (noisy - sig).var()) == pytest.approx(0.05, rel=0.03)


def test_colored_noise_has_requested_spectrum():
    """Coloured noise: per-shell power follows the given shape and the variance is σ²."""
    spec = torch.linspace(4.0, 0.25, D // 2 + 1)
    n = colored_noise(400, D, 2.0, spec, generator=torch.Generator().manual_seed(0))
    assert float(n.std()) == pytest.approx(2.0, rel=0.02)
    shells = shell_index_2d(D)
    power = fft2_centered(n.double()).abs().pow(2).mean(0)
    p1 = float(power[shells == 2].mean())
    p12 = float(power[shells == 12].mean())
    assert p1 / p12 == pytest.approx(float(spec[2] / spec[12]), rel=0.1)


def test_fourier_and_real_forward_models_agree(device):
    """Eq. 9 (slice, shift, CTF in Fourier space) and Eq. 1 (rotate-sum, PSF) give the same images."""
    c, s, a = CENTERS.to(device), SIGMAS.to(device), AMPS.to(device)
    vol = gaussian_volume(c, s, a, D)
    rots = random_rotations(4, device=device)
    shifts = torch.randn(4, 2, device=device)
    ctf = CTFParams.create([12000, 15000, 20000, 9000], [11000, 15500, 19000, 9000], 0.3, device=device)
    f = render_images(vol, rots, shifts, ctf, 1.5, projector="fourier", pad=3)
    r = render_images(vol, rots, shifts, ctf, 1.5, projector="real")
    assert _rel(f, r) < 0.03


def test_flatten_solvent_against_a_numpy_loop():
    """Solvent flattening equals a float64 numpy computation voxel by voxel: unchanged within the
    radius, the mean of the fully outside voxels beyond radius + width, the raised-cosine mix between."""
    from cryolens.imaging import flatten_solvent

    d, radius, width = 12, 3.5, 2.0
    vol = torch.randn(d, d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.7
    got = flatten_solvent(vol, radius, width).numpy()
    v = vol.numpy()
    r = np.empty((d, d, d))
    for z in range(d):
        for y in range(d):
            for x in range(d):
                r[z, y, x] = math.sqrt((x - d // 2) ** 2 + (y - d // 2) ** 2 + (z - d // 2) ** 2)
    m = np.where(r <= radius, 1.0, np.where(r >= radius + width, 0.0,
                                            0.5 * (1 + np.cos(np.pi * (r - radius) / width))))
    bg = v[r >= radius + width].mean()
    assert abs(bg - 0.7) < 0.1
    np.testing.assert_allclose(got, v * m + (1 - m) * bg, rtol=0, atol=1e-12)
    assert np.array_equal(got[r <= radius], v[r <= radius])


def test_shell_filter_volume_scales_each_plane_wave_by_its_shell_weight():
    """Plane waves at |k| = 3 (x), 12 (y), 7 (z) and 5 (the (3, 4, 0) diagonal) cycles per box: each comes out
    multiplied by the weight of its own shell, to float64 precision; a wrong number of weights is refused."""
    from cryolens.imaging import shell_filter_volume

    d = 32
    z, y, x = torch.meshgrid(*(torch.arange(d, dtype=torch.float64),) * 3, indexing="ij")
    waves = {3: torch.cos(2 * math.pi * 3 * x / d + 0.4), 12: 0.8 * torch.sin(2 * math.pi * 12 * y / d),
             7: torch.cos(2 * math.pi * 7 * z / d), 5: torch.cos(2 * math.pi * (3 * x + 4 * y) / d - 1.1)}
    w = torch.linspace(1.0, -0.6, d // 2 + 1, dtype=torch.float64) ** 2
    got = shell_filter_volume(sum(waves.values()), w)
    torch.testing.assert_close(got, sum(float(w[k]) * v for k, v in waves.items()), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="17 shell weights"):
        shell_filter_volume(waves[3], w[:-1])


def test_lowpass_volume_keeps_plane_waves_inside_the_band_and_removes_those_beyond():
    """Three plane waves: along x at 3 cycles per box (inside a 6-shell cut), along y at 12 (beyond the cut
    plus its 2-shell edge) and along z at 7 (on the raised cosine, half-way: factor ½). The low-pass is
    the x wave plus half the z wave, to float64 precision; a resolution finer than Nyquist changes nothing."""
    from cryolens.imaging import lowpass_volume

    d, apix = 32, 1.5
    z, y, x = torch.meshgrid(*(torch.arange(d, dtype=torch.float64),) * 3, indexing="ij")
    keep = torch.cos(2 * math.pi * 3 * x / d + 0.4)
    gone = 0.8 * torch.sin(2 * math.pi * 12 * y / d)
    edge = torch.cos(2 * math.pi * 7 * z / d)
    res = d * apix / 6  # 8 Å: cut at shell 6, edge over shells 6–8
    got = lowpass_volume(keep + gone + edge, res, apix)
    torch.testing.assert_close(got, keep + 0.5 * edge, rtol=0, atol=1e-10)
    torch.testing.assert_close(lowpass_volume(keep + gone, apix, apix, width_shells=0), keep + gone, rtol=0, atol=1e-10)
