"""The kx ≥ 0 half grid (imaging/half_grid.py) against the full-grid insertion it replaces in the accumulator, in
float64: the sums, the map (irfftn against the full inverse transform) and FourierAccumulator's maps and shell means
against a full-grid reconstruction written out here."""

import math

import pytest
import torch

from cryolens.imaging import native
from cryolens.imaging.fft import fft2_centered
from cryolens.imaging.grids import shell_index_3d, spherical_mask
from cryolens.imaging.half_grid import (finish_half, half_staging_grid, half_to_full, scatter_half,
                                        volume_from_half_ft)
from cryolens.imaging.rotations import random_rotations
from cryolens.imaging.slice import insert_slices, volume_from_ft
from cryolens.inference.reconstruct import FourierAccumulator


def _rotations(n: int, g: torch.Generator) -> torch.Tensor:
    """Random rotations plus the awkward ones: the identity (kx = 0 pixels exactly on the self-mated plane), a
    quarter turn about y (the whole slice in the kx = 0 plane) and one a hair off it (corners on both sides)."""
    def about_y(a: float) -> torch.Tensor:
        c, s = math.cos(a), math.sin(a)
        return torch.tensor([[c, 0, s], [0, 1.0, 0], [-s, 0, c]], dtype=torch.float64)

    special = torch.stack([torch.eye(3, dtype=torch.float64), about_y(math.pi / 2), about_y(math.pi / 2 + 0.01)])
    return torch.cat([special, random_rotations(n - 3, generator=g, dtype=torch.float64)])


def _data(d: int, n: int, seed: int):
    """Transforms of real random images, Friedel-symmetric positive weights (|FT| of real images), rotations."""
    g = torch.Generator().manual_seed(seed)
    slices = fft2_centered(torch.randn(n, d, d, dtype=torch.float64, generator=g))
    weights = fft2_centered(torch.rand(n, d, d, dtype=torch.float64, generator=g)).abs()
    return slices, weights, _rotations(n, g)


@pytest.mark.parametrize("compiled", ["1", "0"])
@pytest.mark.parametrize("d,pad", [(8, 1), (8, 2), (12, 2)])
def test_half_grid_equals_the_kx_nonnegative_part_of_the_full_grid(monkeypatch, compiled, d, pad):
    """Inserting at the Friedel mate of kx < 0 frequencies and completing the self-mated planes gives the full
    Hermitian insertion's (insert_slices, hermitian=True) values at kx = 0 … Dp/2 to 1e-12, with the compiled
    kernel and with the torch path; the other half, rebuilt by symmetry, equals the full grid's too."""
    monkeypatch.setenv("CRYOLENS_NATIVE", compiled)
    native._STATE.clear()
    slices, weights, rots = _data(d, 20, d + pad)
    padded = pad * d
    full_data, full_weight = insert_slices(slices, rots, padded, weights=weights, hermitian=True)
    st = half_staging_grid(padded, 3, dtype=torch.float64)
    scatter_half([st], [slices], rots, padded, [weights])
    data, weight = finish_half(st, padded)
    assert data.shape == (padded, padded, padded // 2 + 1)
    for half, full in ((data, full_data), (weight, full_weight)):
        scale = float(full.abs().max())
        assert float((half[..., :padded // 2] - full[..., padded // 2:]).abs().max()) < 1e-12 * scale
        assert float((half[..., padded // 2] - full[..., 0]).abs().max()) < 1e-12 * scale  # kx = ±Nyquist
        assert float((half_to_full(half, half.is_complex()) - full).abs().max()) < 1e-12 * scale
    native._STATE.clear()


@pytest.mark.parametrize("d,pad", [(12, 2), (8, 1), (12, 3)])
def test_map_from_the_half_grid_equals_the_full_inverse_transform(d, pad):
    """The axis-by-axis inverse of the half grid (y, then z on the kept rows, then irfft on the kept columns) with
    the sign and crop bookkeeping = volume_from_ft of the full grid (float64), and the input is left as it was."""
    slices, weights, rots = _data(d, 20, 5)
    full_data, _ = insert_slices(slices, rots, pad * d, weights=weights, hermitian=True)
    st = half_staging_grid(pad * d, 3, dtype=torch.float64)
    scatter_half([st], [slices], rots, pad * d, [weights])
    half = finish_half(st, pad * d)[0]
    before = half.clone()
    ours = volume_from_half_ft(half, d)
    ref = volume_from_ft(full_data, d)
    assert float((ours - ref).abs().max()) < 1e-12 * float(ref.abs().max())
    assert torch.equal(half, before)


@pytest.mark.parametrize("compiled", ["1", "0"])
def test_accumulator_maps_and_shell_means_equal_a_full_grid_reconstruction(monkeypatch, compiled):
    """FourierAccumulator (half grids; voxel-major kernel or torch) against the reconstruction written out on the
    full grid: data / (weight + λ[shell]) with shells round(round(|k|·Dp)/pad), the full inverse transform and the
    corner fade; and the shell means of the weight and its square over the full grid."""
    monkeypatch.setenv("CRYOLENS_NATIVE", compiled)
    native._STATE.clear()
    d, pad = 12, 2
    slices, weights, rots = _data(d, 30, 9)
    acc = FourierAccumulator(d, pad, "cpu", torch.float64)
    acc.add(slices[:17], rots[:17], weights[:17].sqrt())  # CTF c: the sums get c·X̃ and c²
    acc.add(slices[17:], rots[17:], weights[17:].sqrt())
    full_data, full_weight = insert_slices(slices * weights.sqrt(), rots, pad * d, weights=weights, hermitian=True)
    shells = torch.round(shell_index_3d(pad * d, dtype=torch.float64) / pad).long()
    n = d // 2 + 1
    for power in (1, 2):
        inside = shells < n
        ref = torch.bincount(shells[inside], weights=full_weight[inside] ** power, minlength=n)
        ref = ref / torch.bincount(shells[inside], minlength=n).double()
        assert torch.allclose(acc.shell_weight(power), ref, rtol=1e-12, atol=0)
    reg = torch.linspace(0.5, 3.0, n, dtype=torch.float64) * float(full_weight.mean())
    table = torch.full((int(shells.max()) + 1,), torch.inf, dtype=torch.float64)
    table[:n] = reg
    ref_map = volume_from_ft(full_data / (full_weight + table[shells]), d)
    ref_map = ref_map * spherical_mask(d, radius=d / 2, width=3.0).double()
    ours = acc.reconstruct(reg)
    assert float((ours - ref_map).abs().max()) < 1e-12 * float(ref_map.abs().max())
    assert float((acc.data - full_data).abs().max()) < 1e-12 * float(full_data.abs().max())  # read again after
    native._STATE.clear()
