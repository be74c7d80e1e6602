"""3DFlex's training box (issue 23): images Fourier-cropped to a smaller box equal the same band-limited
function sampled on the coarser grid (an independent, analytic computation); flows learnt on a small box,
rescaled to the full box, move a map by the same distance in Å (a translation checked against the
analytically shifted Gaussian)."""

import numpy as np
import torch

from cryolens.imaging import CTFParams, gaussian_volume
from cryolens.inference.flex import FlexModel, crop_particles, rescale_flows
from cryolens.io.dataset import read_images
from cryolens.io.mrc import write_stack
from cryolens.io.particles import Particles


def cosine_image(d: int, waves: list[tuple[int, int, float, float]], step: int = 1) -> np.ndarray:
    """``Σ a·cos(2π(kx·x + ky·y)/D + φ)`` over ``waves (kx, ky, a, φ)`` (cycles per box ``D``), at the pixels
    ``x = (i − d/2)·step`` of a ``d × d`` grid (px of the box ``D = d·step``, relative to its centre)."""
    big = d * step
    x = (np.arange(d) - d // 2) * step
    yy, xx = np.meshgrid(x, x, indexing="ij")
    return sum(a * np.cos(2 * np.pi * (kx * xx + ky * yy) / big + p) for kx, ky, a, p in waves)


def test_crop_particles_samples_a_band_limited_image_on_the_coarse_grid(tmp_path):
    rng = np.random.default_rng(0)
    d, small, n = 32, 16, 3
    images = []
    for _ in range(n):  # frequencies below the small box's Nyquist (8 cycles per box)
        waves = [(int(rng.integers(-7, 8)), int(rng.integers(-7, 8)), rng.normal(), rng.uniform(0, 6.28))
                 for _ in range(6)]
        images.append((cosine_image(d, waves), cosine_image(small, waves, step=d // small)))
    write_stack(tmp_path / "s.mrcs", np.stack([a for a, _ in images]).astype(np.float32), 1.5)
    ctf = CTFParams.create(torch.full((n,), 9000.0), torch.full((n,), 8800.0), torch.zeros(n), 300, 2.7, 0.1)
    shifts = torch.tensor([[1.0, -2.0], [0.5, 0.0], [-3.0, 4.0]])
    parts = Particles(1.5, d, [str(tmp_path / "s.mrcs")], np.zeros(n, int), np.arange(n), torch.eye(3).repeat(n, 1, 1),
                      shifts, ctf)
    out = crop_particles(parts, small, tmp_path / "small.mrcs", batch_size=2)
    assert out.box_size == small and out.pixel_size == 3.0 and len(out) == n
    assert torch.allclose(out.shifts, shifts / 2)
    assert torch.equal(out.ctf.defocus_u, ctf.defocus_u)
    got = read_images(out, np.arange(n)).numpy()
    want = np.stack([b for _, b in images])
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()


def test_rescaled_flows_move_the_full_box_map_by_the_same_angstroms():
    small, big, cells, shift_px = 16, 32, 4, 1.25
    models = [FlexModel(d, 48.0 / d, 5, 2, cells, 2, 8, torch.zeros(d, d, d), 0.5, 1.0, 10.0, 1.0)
              for d in (small, big)]
    out = models[0].volume.generator.out
    with torch.no_grad():  # the small model's flow: a translation of shift_px px along x, whatever z
        out.weight.zero_()
        out.bias.zero_()
        out.bias.view(3, -1)[0] = shift_px
        models[0].table.mu.normal_()
    rescale_flows(models[0], models[1])
    assert torch.equal(models[1].table.mu, models[0].table.mu)
    centre = torch.tensor([[2.0, -3.0, 1.0]])
    models[1].volume.density.data.copy_(gaussian_volume(centre, torch.tensor([2.5]), torch.ones(1), big))
    moved = models[1].volume.render(models[1].table.mu[:2])
    want = gaussian_volume(centre + torch.tensor([[2 * shift_px, 0.0, 0.0]]), torch.tensor([2.5]), torch.ones(1), big)
    for m in moved:  # a 2.5 px shift of the 32 px box: 1.25 px of the 16 px one, the same Å
        assert (m - want).norm() < 0.03 * want.norm(), float((m - want).norm() / want.norm())
