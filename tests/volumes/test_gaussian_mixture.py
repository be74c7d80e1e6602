"""The Gaussian-mixture volume against independent computations: its closed-form transform against the FFT
of its own map (float64), its analytic projection against the Fourier-slice projection of its map, its maps
against the dense reference sampler with hand-displaced centres, a mixture fitted to a map against the map
(FSC), a mixture built from atoms against the simulator's form-factor map, and moved atoms by hand."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from cryolens.imaging import CTFParams, fft3_centered, gaussian_volume, random_rotations, render_images
from cryolens.imaging.forward import ImageForward, ProjectorForward
from cryolens.imaging.grids import freq_grid_3d
from cryolens.io.atomic import read_atoms, residue_index
from cryolens.metrics.fsc import fsc
from cryolens.simulate import atoms_to_volume, bundled_model
from cryolens.volumes import GaussianMixtureVolume, RealSpaceProjector, VolumeModel
from cryolens.volumes.gaussian_mixture import fit_to_map, from_atoms, gaussians_for_map

F64 = torch.float64


class _Linear(nn.Module):
    """z (B, L) → Δcentres (B, N, 3) Å and Δamplitudes (B, N): fixed random linear maps."""

    def __init__(self, n: int, zdim: int, amplitudes: bool = True, dtype=F64):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.register_buffer("wc", torch.randn(zdim, n * 3, generator=g, dtype=dtype))
        self.register_buffer("wa", torch.randn(zdim, n, generator=g, dtype=dtype) * 0.2 if amplitudes else None)
        self.n = n

    def forward(self, z):
        dc = (z @ self.wc).reshape(-1, self.n, 3)
        return dc, None if self.wa is None else z @ self.wa


def _mixture(n=6, d=32, px=1.5, zdim=2):
    """Gaussians well inside the box (centres ≤ 4 px off, σ 1.6–2.2 px): tails and aliasing ≪ 1e-4."""
    g = torch.Generator().manual_seed(0)
    centres = (torch.rand(n, 3, generator=g, dtype=F64) - 0.5) * 6 * px
    sigmas = (1.6 + 0.6 * torch.rand(n, generator=g, dtype=F64)) * px
    amps = 0.5 + torch.rand(n, generator=g, dtype=F64)
    return GaussianMixtureVolume(centres, amps, sigmas, d, px, decoder=_Linear(n, zdim), zdim=zdim)


def _rel(a, b):
    return float((a - b).detach().abs().max() / b.detach().abs().max())


def test_fourier_values_equal_the_fft_of_the_rendered_map(device):
    """fourier(k, z) on the whole grid = the centred DFT of density(z), per row of z, in float64 (the
    sign and 2π of the phase, the (2π)^{3/2} σ³ normalisation and the decoder's Δ all enter both);
    hartley = Re − Im."""
    vol = _mixture().to(device)
    assert isinstance(vol, VolumeModel) and isinstance(vol, RealSpaceProjector)
    z = torch.tensor([[0.0, 0.0], [1.5, -1.0]], dtype=F64, device=device)
    d = vol.box_size
    k = freq_grid_3d(d, device=device, dtype=F64).reshape(1, -1, 3).expand(2, -1, -1)
    f = vol.fourier(k, z).detach().reshape(2, d, d, d)
    ref = fft3_centered(vol.density(z).detach())
    assert f.dtype == torch.complex128
    assert _rel(f, ref) < 1e-5
    assert _rel(f[1], ref[0]) > 0.1  # the two conformations differ: the check sees z
    h = vol.hartley(k, z).reshape(2, d, d, d)
    assert torch.allclose(h, ref.real - ref.imag, atol=1e-5 * float(ref.abs().max()))


def test_maps_place_each_gaussian_at_its_displaced_centre():
    """density(z) = the dense sampler (imaging.gaussian_volume) at centres + Δ(z) in voxels, amplitudes +
    Δa(z); z = None gives the neutral mixture; render is its float32 copy; a coarser render samples the
    same box with bigger pixels."""
    vol = _mixture(zdim=3)
    vol.decoder = _Linear(vol.n_gaussians, 3)
    z = torch.tensor([[0.3, -0.2, 0.5]], dtype=F64)
    dc, da = vol.decoder(z)
    px, d = vol.pixel_size, vol.box_size
    hand = gaussian_volume((vol.centers + dc[0]) / px, vol.sigmas / px, vol.amplitudes + da[0], d)
    assert _rel(vol.density(z)[0], hand) < 1e-12
    neutral = gaussian_volume(vol.centers / px, vol.sigmas / px, vol.amplitudes, d)
    assert _rel(vol.density()[0], neutral) < 1e-12
    assert vol.render(z).dtype == torch.float32 and _rel(vol.render(z)[0].double(), hand) < 1e-6
    half = gaussian_volume((vol.centers + dc[0]) / (2 * px), vol.sigmas / (2 * px), vol.amplitudes + da[0], d // 2)
    assert _rel(vol.density(z, size=d // 2)[0], half) < 1e-12


def test_projection_matches_the_fourier_slice_projection_of_its_map(device):
    """project(R, z) (closed form) = the oversampled Fourier-slice projection of density(z) per row; the
    interpolation error falls with the oversampling as for any map (imaging/test_physics)."""
    vol = _mixture(d=24, px=2.0).to(device)
    rots = random_rotations(4, generator=torch.Generator().manual_seed(3)).to(device, F64)
    z = torch.tensor([[0.0, 0.0], [0.5, 0.5], [-0.4, 0.3], [0.2, -0.6]], dtype=F64, device=device)
    proj = vol.project(rots, z)
    maps = vol.density(z)
    ref2 = torch.cat([render_images(maps[i], rots[i:i + 1], pad=2) for i in range(4)])
    ref4 = torch.cat([render_images(maps[i], rots[i:i + 1], pad=4) for i in range(4)])
    err2 = float((proj - ref2).detach().norm() / ref2.detach().norm())
    err4 = float((proj - ref4).detach().norm() / ref4.detach().norm())
    assert err2 < 0.04 and err4 < 0.5 * err2
    # a neutral mixture broadcasts against many rotations
    assert torch.allclose(vol.project(rots)[1], vol.project(rots[1:2], z[:1])[0])
    # the framework's forward models serve it unchanged: its own projector vs the image forward model of its
    # map, with shifts and a CTF
    ctf = CTFParams.create([9000.0, 12000.0, 15000.0, 20000.0], dtype=F64, device=device)
    shifts = torch.tensor([[0.5, -1.0], [1.5, 0.0], [-2.0, 1.0], [0.0, 0.0]], dtype=F64, device=device)
    mine = ProjectorForward()(vol, rots, shifts, ctf, vol.pixel_size)
    ref = ImageForward(pad=4)(vol.density()[0].detach(), rots, shifts, ctf, vol.pixel_size)
    assert float((mine - ref).detach().norm() / ref.norm()) < 0.01  # measured 0.0015; a flipped shift: 0.98


def test_fitted_mixture_reproduces_the_map():
    """fit_to_map on the simulator's map of a real protein (4E43, 3 Å/px, D = 24): FSC ≥ 0.9 with the map
    up to half of Nyquist; the seeded start before any step is clearly worse (the fit does the work)."""
    atoms = read_atoms(bundled_model("4E43"))
    target = atoms_to_volume(atoms, 24, 3.0)
    fitted = fit_to_map(target, 3.0, 80, steps=150)
    curve = fsc(fitted.render()[0], target)
    assert curve[1:7].min() >= 0.9, curve
    start = fsc(fit_to_map(target, 3.0, 80, steps=0).render()[0], target)
    assert start[1:7].min() < 0.85
    assert fitted.centers.requires_grad and not fitted.sigmas.requires_grad  # learn: centres and amplitudes


def test_the_automatic_count_lets_the_fit_follow_the_map_to_nyquist():
    """gaussians_for_map: one Gaussian per five voxels above 10 % of the maximum (counted by hand on a built
    map; an empty map still gets one; the cap holds). On 4E43 at 3 Å/px, D = 24 that count (281) keeps the
    fitted mixture's FSC with the map ≥ 0.9 to 0.9 × Nyquist, where 80 Gaussians fall below 0.5 at 0.75 ×
    Nyquist."""
    v = torch.zeros(8, 8, 8)
    v[1:4, 1:4, 1:5] = 1.0  # 36 voxels of density
    v[6, 6, :] = 0.05  # 8 voxels below 10 % of the maximum
    assert gaussians_for_map(v) == 8  # ceil(36 / 5)
    assert gaussians_for_map(torch.zeros(4, 4, 4)) == 1 and gaussians_for_map(v, most=5) == 5
    target = atoms_to_volume(read_atoms(bundled_model("4E43")), 24, 3.0)
    n = gaussians_for_map(target)
    assert n == math.ceil(int((target > 0.1 * target.max()).sum()) / 5)
    auto = fsc(fit_to_map(target, 3.0, n, steps=150).render()[0], target)
    few = fsc(fit_to_map(target, 3.0, 80, steps=150).render()[0], target)
    assert auto[1:12].min() >= 0.9, auto
    assert few[9] < 0.5, few


def test_mixture_from_atoms_is_the_simulated_map():
    """One Gaussian per atom (form-factor integral, moment-matched width) renders the simulator's
    five-term form-factor map (FSC ≥ 0.99 to Nyquist, same integral); one per residue keeps the integral,
    sits on the Cα and still matches the map at low resolution."""
    atoms = read_atoms(bundled_model("4E43"))
    px, d = 2.5, 32
    truth = atoms_to_volume(atoms, d, px)
    per_atom = from_atoms(atoms, d, px, per="atom").render()[0]
    assert fsc(per_atom, truth)[1:].min() > 0.99
    assert float(per_atom.sum()) == pytest.approx(float(truth.sum()), rel=1e-3)
    res = from_atoms(atoms, d, px)
    residues = residue_index(atoms)
    assert res.n_gaussians == residues.max() + 1
    assert float(res.render()[0].sum()) == pytest.approx(float(truth.sum()), rel=1e-3)
    ca = np.flatnonzero(atoms.atom_names == "CA")[0]
    expect = atoms.coords[ca] - atoms.center_of_mass()
    assert np.allclose(res.centers[residues[ca]].detach().numpy(), expect, atol=1e-4)
    assert fsc(res.render()[0], truth)[1:4].min() > 0.95


def test_atomic_models_move_every_atom_with_its_residue():
    """atomic_models(z): each atom moved by its residue's Δ (hand check on two atoms of different
    residues), B-factors kept; z = None gives the model itself."""
    atoms = read_atoms(bundled_model("1hvr"))
    vol = from_atoms(atoms, 64, 1.5)
    n = vol.n_gaussians
    vol.attach_decoder(_Linear(n, 2, amplitudes=False, dtype=torch.float32), 2)
    z = torch.tensor([[1.0, -0.5]])
    moved = vol.atomic_models(z)[0]
    delta = (z @ vol.decoder.wc).reshape(n, 3).double().numpy()
    res = residue_index(atoms)
    for i in (0, len(atoms) - 1):
        assert np.allclose(moved.coords[i], atoms.coords[i] + delta[res[i]], atol=1e-5)
    assert res[0] != res[len(atoms) - 1]
    assert np.array_equal(moved.bfactors, atoms.bfactors)
    assert np.allclose(vol.atomic_models()[0].coords, atoms.coords)


def test_bad_construction_is_refused():
    with pytest.raises(ValueError, match="sigma"):
        GaussianMixtureVolume(torch.zeros(2, 3), torch.ones(2), torch.tensor([1.0, -1.0]), 16, 1.0)
    with pytest.raises(ValueError, match="learn"):
        GaussianMixtureVolume(torch.zeros(2, 3), torch.ones(2), torch.ones(2), 16, 1.0, learn=("widths",))
    with pytest.raises(ValueError, match="zdim"):
        GaussianMixtureVolume(torch.zeros(2, 3), torch.ones(2), torch.ones(2), 16, 1.0, zdim=2)
    assert math.isclose(GaussianMixtureVolume(torch.zeros(2, 3), torch.ones(2), torch.ones(2), 16, 1.0)
                        .project(torch.eye(3)[None]).sum().item(), 2 * (2 * math.pi) ** 1.5, rel_tol=1e-4)


def test_chunked_transform_and_map_have_the_finite_difference_gradient(monkeypatch):
    """With the Gaussians split into several checkpointed chunks, the gradients of the transform (with
    respect to centres, widths, amplitudes and frequencies) and of the map are the finite-difference ones
    (float64)."""
    import cryolens.imaging.gaussian as gaussian

    monkeypatch.setattr(gaussian, "_CHUNK", 12)  # B·K = 6 → two Gaussians per chunk, three chunks
    g = torch.Generator().manual_seed(4)
    args = (torch.randn(1, 5, 3, generator=g, dtype=F64), 1.5 + torch.rand(1, 5, generator=g, dtype=F64),
            torch.rand(1, 5, generator=g, dtype=F64), torch.rand(2, 3, 3, generator=g, dtype=F64) - 0.5)
    args = tuple(a.requires_grad_() for a in args)
    w = torch.randn(2, 2, 3, 2, generator=g, dtype=F64)  # a fixed random weighting of the outputs
    assert torch.autograd.gradcheck(lambda *x: (torch.view_as_real(gaussian.mixture_fourier(*x)) * w).sum(), args)
    monkeypatch.setattr(gaussian, "_CHUNK", 2 * 6 * 6)  # D = 6: two Gaussians per chunk
    w = torch.randn(1, 6, 6, 6, generator=g, dtype=F64)
    assert torch.autograd.gradcheck(lambda *x: (gaussian.mixture_volumes(*x, 6) * w).sum(), args[:3])


def test_projections_without_autograd_are_chunked_and_equal(monkeypatch):
    """Without autograd the image-space sums (real-space projections and their separable transforms) run
    over chunks of the Gaussians — bounded memory for a large batch of a per-atom model — and give the
    one-shot sums (with autograd, all Gaussians at once) to float64 rounding; the chunk really is smaller than
    the mixture."""
    import cryolens.imaging.gaussian as gaussian

    g = torch.Generator().manual_seed(6)
    c, s = torch.randn(3, 40, 3, generator=g, dtype=F64) * 3, 1 + torch.rand(3, 40, generator=g, dtype=F64)
    a = torch.rand(3, 40, generator=g, dtype=F64)
    rots = random_rotations(3, generator=g, dtype=F64)
    whole = (gaussian.mixture_projections(c, s, a, rots, 12), gaussian.mixture_projection_ft(c, s, a, rots, 12))
    monkeypatch.setattr(gaussian, "_CHUNK", 3 * 2 * 12 * 7)  # B·2·D per Gaussian: 7 Gaussians per chunk
    calls = []
    monkeypatch.setattr(gaussian, "_profiles", lambda *x, f=gaussian._profiles: calls.append(x[0].shape[1]) or f(*x))
    with torch.no_grad():
        chunked = (gaussian.mixture_projections(c, s, a, rots, 12),
                   gaussian.mixture_projection_ft(c, s, a, rots, 12))
    assert max(calls, default=0) == 7 and len(calls) == 6  # 40 Gaussians: 6 chunks, projections only
    for w, ch in zip(whole, chunked):
        assert _rel(ch, w) < 1e-12


def test_slices_on_the_image_grid_are_central_slices_and_projection_transforms(device):
    """project_fourier(R, z) (separable) = fourier(R · [kx, ky, 0], z) (the 3D closed form at the slice
    points) and = the centred 2D DFT of project(R, z), in float64."""
    from cryolens.imaging import fft2_centered
    from cryolens.imaging.grids import freq_grid_2d

    vol = _mixture(d=24, px=2.0).to(device)
    rots = random_rotations(3, generator=torch.Generator().manual_seed(5), dtype=F64).to(device)
    z = torch.tensor([[0.0, 0.0], [0.8, -0.3], [-0.5, 0.6]], dtype=F64, device=device)
    sl = vol.project_fourier(rots, z).detach()
    f2 = freq_grid_2d(24, device=device, dtype=F64).reshape(-1, 2)
    pts = torch.einsum("kj,bij->bki", torch.cat([f2, torch.zeros_like(f2[:, :1])], 1), rots)
    assert _rel(sl.reshape(3, -1), vol.fourier(pts, z).detach()) < 1e-12
    assert _rel(sl, fft2_centered(vol.project(rots, z).detach())) < 1e-5


def test_rigid_fit_is_scipys_alignment_and_recovers_an_exact_motion():
    from scipy.spatial.transform import Rotation

    from cryolens.imaging.rotations import rigid_fit

    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 12, 3, generator=g, dtype=F64) * 10
    q = random_rotations(4, generator=g).double()
    c = torch.randn(4, 3, generator=g, dtype=F64) * 5
    y = x @ q.transpose(1, 2) + c[:, None]
    r, t = rigid_fit(x, y)
    assert torch.allclose(r, q, atol=1e-10) and torch.allclose(t, c, atol=1e-9)
    noisy = y[0] + torch.randn(12, 3, generator=g, dtype=F64)  # with noise: scipy's weighted Wahba solution
    w = torch.rand(12, generator=g, dtype=F64) + 0.1
    r, t = rigid_fit(x[0], noisy, w)
    cx, cy = (w[:, None] * x[0]).sum(0) / w.sum(), (w[:, None] * noisy).sum(0) / w.sum()
    ref = Rotation.align_vectors((noisy - cy).numpy(), (x[0] - cx).numpy(), weights=w.numpy())[0].as_matrix()
    assert np.allclose(r.numpy(), ref, atol=1e-9) and torch.allclose(t, cy - r @ cx, atol=1e-9)


def test_a_fixed_frame_holds_its_gaussians_and_the_moved_poses_give_the_same_images():
    """set_frame moves every decoded mixture rigidly (the chosen Gaussians then have no net rotation or
    translation from their neutral place); moved_poses, with the motion from frame(), reproduce each
    image, shifts included: projections of the free mixture at (R, s) = of the framed one at (R', s')."""
    from cryolens.imaging.rotations import moved_poses, rigid_fit
    from cryolens.imaging.shift import shift_images

    vol = _mixture(n=8, d=32, zdim=2)
    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, 2, generator=g, dtype=F64)
    rots = random_rotations(3, generator=g).double()
    shifts = torch.randn(3, 2, generator=g, dtype=F64)
    free_c = vol.params(z)[0].detach()
    images = shift_images(vol.project(rots, z), shifts)
    vol.set_frame([0, 2, 3, 5])
    framed_c = vol.params(z)[0].detach()
    r, t = rigid_fit(framed_c[:, [0, 2, 3, 5]], vol.centers[[0, 2, 3, 5]])
    assert torch.allclose(r, torch.eye(3, dtype=F64).expand(3, 3, 3), atol=1e-9)
    assert float(t.abs().max()) < 1e-9
    q, c = vol.frame(z)
    assert torch.allclose(framed_c, free_c @ q.transpose(1, 2) + c[:, None], atol=1e-9)
    assert float((framed_c - free_c).abs().max()) > 0.5  # the frame did move the mixture
    new_r, new_s = moved_poses(rots, shifts, q, c, vol.pixel_size)
    again = shift_images(vol.project(new_r, z), new_s)
    assert _rel(again, images) < 1e-6
    wrong = shift_images(vol.project(new_r, z), shifts)  # the rotation alone does not do it
    assert _rel(wrong, images) > 1e-2
    assert vol.set_frame(None).frame_gaussians is None and torch.equal(vol.params(z)[0], free_c)
    with pytest.raises(ValueError, match="at least 3"):
        vol.set_frame([0, 1])


def test_atom_maps_are_the_simulated_maps_of_the_moved_atoms():
    """atom_maps(z): the form-factor map of the model moved to z (one Gaussian per atom, its own width), i.e. the
    simulator's map of atomic_models(z) (FSC ≥ 0.99 to Nyquist, same integral), not the base model's."""
    atoms = read_atoms(bundled_model("4E43"))
    px, d = 2.5, 32
    n = int(residue_index(atoms).max()) + 1
    vol = from_atoms(atoms, d, px, decoder=_Linear(n, 2, amplitudes=False, dtype=torch.float32), zdim=2)
    z = torch.tensor([[0.8, -0.5]])
    moved = vol.atomic_models(z)[0]
    truth = atoms_to_volume(moved, d, px, center=atoms.center_of_mass())
    got = vol.atom_maps(z)[0]
    assert fsc(got, truth)[1:].min() > 0.99
    assert float(got.sum()) == pytest.approx(float(truth.sum()), rel=1e-3)
    assert fsc(vol.atom_maps(None)[0], truth)[4:].min() < 0.9  # the unmoved model's map is another map


def test_gaussians_of_a_selection_are_those_of_its_atoms():
    """gaussians_of: a chain, a residue range and both joined select the Gaussians of exactly those atoms' residues
    (by hand from residue_index); a selection that matches nothing is an InputError naming the chains."""
    from cryolens.errors import InputError

    atoms = read_atoms(bundled_model("4E43"))
    vol = from_atoms(atoms, 32, 2.5)
    group = residue_index(atoms)
    chain_b = atoms.chain_ids == "B"
    in_range = (atoms.chain_ids == "A") & (atoms.residue_numbers >= 10) & (atoms.residue_numbers <= 40)
    assert np.array_equal(vol.gaussians_of("B"), np.unique(group[chain_b]))
    assert np.array_equal(vol.gaussians_of("A:10-40"), np.unique(group[in_range]))
    assert np.array_equal(vol.gaussians_of("A:10-40,B"), np.unique(group[in_range | chain_b]))
    with pytest.raises(InputError, match="chains: A, B"):
        vol.gaussians_of("Q")
