"""The fixed-pose Class3D image cache (inference/image_cache.py): an image's shift undone at the full box
equals the transform of the unshifted image (integer shifts: a periodic roll), its crop to the working box
is the working box's own transform, shift and CTF (evaluated there at the coarser pixel), and iterations
served from the cache — without reading an image — give the results of iterations that transform every
image again."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cryolens.imaging.ctf import CTFParams, ctf_2d
from cryolens.imaging.fft import fft2_centered
from cryolens.imaging.rotations import random_rotations
from cryolens.imaging.shift import phase_shift
from cryolens.imaging.spectra import fourier_crop_images
from cryolens.inference import image_cache
from cryolens.inference.classes import class_em_iteration_fixed_poses
from cryolens.inference.image_cache import ShiftedImageCache, full_box_images

from test_classes import PIX, D, _particles, _two_class_images


def test_full_box_images_undo_integer_shifts_and_crop_to_the_working_box():
    """Images rolled by whole pixels (x, y) → their transforms with the shift undone are the unrolled
    images' transforms (float64, to 1e-10); cropped to d = 10 they equal the working box's computation from
    scratch (crop the unshifted transform, undo the shift scaled by d/D there, CTF at pixel PIX·D/d)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, D, D, generator=g, dtype=torch.float64)
    shifts = torch.tensor([[2.0, -1.0], [0.0, 3.0], [-4.0, 5.0]], dtype=torch.float64)  # (x, y) px
    rolled = torch.stack([torch.roll(b, (int(s[1]), int(s[0])), dims=(-2, -1)) for b, s in zip(base, shifts)])
    ctf = CTFParams.create(torch.tensor([9000.0, 15000.0, 21000.0]), torch.tensor([8500.0, 15500.0, 20000.0]),
                           defocus_angle=0.3, dtype=torch.float64)
    data = SimpleNamespace(shifts=shifts, box_size=D, pixel_size=PIX)
    y, c = full_box_images(data, torch.arange(3), rolled, ctf, "cpu", torch.float64)
    torch.testing.assert_close(y, fft2_centered(base), rtol=0, atol=1e-10 * float(y.abs().max()))
    d, lo = 10, D // 2 - 5
    scratch = phase_shift(fourier_crop_images(fft2_centered(rolled), d), -shifts * d / D)
    torch.testing.assert_close(fourier_crop_images(y, d), scratch, rtol=0, atol=1e-10 * float(y.abs().max()))
    torch.testing.assert_close(c[:, lo:lo + d, lo:lo + d], ctf_2d(ctf, d, PIX * D / d, dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_cached_iterations_equal_transforming_every_image_again(tmp_path, monkeypatch):
    """Two fixed-pose iterations in working boxes 12 and 14: with a cache filled by the first, the second
    reads no image (the batch reader is made to fail) and gives the uncached iteration's probabilities,
    σ² and maps; a cache too small for the images is off (they are read every iteration)."""
    vols, _, lab, ctf = _two_class_images(40, noise_sd=0.4, seed=2, dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    rots = random_rotations(40, generator=g)
    shifts = (torch.rand(40, 2, generator=g) - 0.5) * 4
    from cryolens.imaging.forward import render_images

    img = torch.stack([render_images(vols[int(lab[i])], rots[i:i + 1], shifts[i:i + 1], ctf[[i]], PIX)[0]
                       for i in range(40)]) + 0.4 * torch.randn(40, D, D, generator=g)
    p = _particles(tmp_path, img, rots, shifts, ctf)
    vols = vols.float()
    sigma2 = torch.full((D // 2 + 1,), 40 * 0.4**2 * D * D)
    kw = dict(k_max=5, batch_size=16)
    cache = ShiftedImageCache(len(p), D, "cpu", torch.float32)
    first = class_em_iteration_fixed_poses(p, vols, sigma2, work_size=12, image_cache=cache, **kw)
    assert cache.enabled and bool(cache.filled.all())
    plain = class_em_iteration_fixed_poses(p, first.volumes, first.sigma2, first.class_prior, work_size=14, **kw)

    def no_reading(*args, **kwargs):
        raise AssertionError("an image was read although the cache holds them all")

    monkeypatch.setattr(image_cache, "batches", no_reading)
    cached = class_em_iteration_fixed_poses(p, first.volumes, first.sigma2, first.class_prior, work_size=14,
                                            image_cache=cache, **kw)
    assert 0.05 < float(plain.class_probability[:, 1].mean()) < 0.95
    torch.testing.assert_close(cached.class_probability, plain.class_probability, rtol=0, atol=1e-6)
    torch.testing.assert_close(cached.sigma2, plain.sigma2, rtol=1e-6, atol=0)
    torch.testing.assert_close(cached.volumes, plain.volumes, rtol=0, atol=1e-6 * float(plain.volumes.abs().max()))
    off = ShiftedImageCache(len(p), D, "cpu", torch.float32, max_bytes=12 * len(p) * D * D - 1)
    assert not off.enabled
    with pytest.raises(AssertionError, match="an image was read"):
        class_em_iteration_fixed_poses(p, first.volumes, first.sigma2, first.class_prior, image_cache=off, **kw)
    assert np.isfinite(float(cached.log_likelihood))
