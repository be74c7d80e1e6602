"""The one-call projection through the kx ≥ 0 half of the transform (cryolens.imaging.half_volume) against
the full-transform path it replaces, in float64: same slices (no Friedel shortcut in the reference), same
images, and its padding step is exactly ifftshift of the centered zero-pad."""

import torch

from cryolens.imaging import random_rotations
from cryolens.imaging.fft import ifft2_centered
from cryolens.imaging.half_volume import _wrapped_pad, extract_from_half_sampling_volume, half_sampling_volume
from cryolens.imaging.forward import render_images
from cryolens.imaging.slice import extract_slices, pad_volume, prepare_volume_ft


def test_wrapped_pad_is_ifftshift_of_the_centered_pad():
    """Along each axis, for even and odd D: the one-copy pad equals ifftshift(pad_volume(x))."""
    for d, padded in ((6, 12), (7, 14), (8, 24)):
        x = torch.randn(d, d, d, dtype=torch.float64)
        ref = torch.fft.ifftshift(pad_volume(x, padded), dim=(-3, -2, -1))
        got = _wrapped_pad(_wrapped_pad(_wrapped_pad(x, padded, -1), padded, -2), padded, -3)
        assert torch.equal(got, ref)


def test_half_transform_slices_equal_the_full_transform_slices():
    """Slices from the half transform (points with p_x < 0 read at −p and conjugated) equal trilinear slices
    of the full oversampled transform, interpolated on every pixel (no Friedel fill), to float64 rounding,
    for pad 2 and 3 and rotations covering every sign of p_x (including the identity: the +Nyquist planes)."""
    torch.manual_seed(0)
    for d, pad in ((16, 2), (12, 3)):
        v = torch.randn(d, d, d, dtype=torch.float64)
        rots = torch.cat([torch.eye(3, dtype=torch.float64)[None], random_rotations(30).double()])
        ref = extract_slices(prepare_volume_ft(v, pad), rots, d, hermitian=False)
        got = extract_from_half_sampling_volume(half_sampling_volume(v, pad), rots, d)
        assert torch.allclose(got, ref, rtol=0, atol=1e-10 * float(ref.abs().max())), (d, pad)


def test_render_images_matches_the_full_transform_projection():
    """render_images (half transform) equals the inverse transform of the full transform's slices (float64)."""
    torch.manual_seed(1)
    v = torch.randn(16, 16, 16, dtype=torch.float64)
    rots = random_rotations(8).double()
    ref = ifft2_centered(extract_slices(prepare_volume_ft(v, 2), rots, 16, hermitian=False)).real
    got = render_images(v, rots)
    assert torch.allclose(got, ref, rtol=0, atol=1e-10 * float(ref.abs().max()))
