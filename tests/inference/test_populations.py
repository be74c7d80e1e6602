"""Multi-CryoGAN's parts: the voxel decoder z → V(z) (positive maps, every z at the base map at the start,
trainable) and the population read-out (k-means of sampled maps) against a population of known maps."""

import numpy as np
import torch

from cryolens.imaging import gaussian_volume
from cryolens.inference.populations import kmeans_maps, sample_maps
from cryolens.volumes.decoder import VoxelDecoder


def test_kmeans_of_sampled_maps_finds_the_states_and_their_populations():
    """100 maps: 30 of state A and 70 of state B (two blob maps 4 px apart, D 8), each plus white noise of 10 %
    of the peak: the centres are A and B (largest population first, within the noise's mean), the populations
    exactly 0.7 / 0.3 and every sample labelled with its own state."""
    d = 8
    a = gaussian_volume(torch.tensor([[-2.0, 0.0, 0.0]]), torch.tensor([1.5]), torch.tensor([1.0]), d)
    b = gaussian_volume(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([1.5]), torch.tensor([1.0]), d)
    truth = np.r_[np.zeros(30, int), np.ones(70, int)]
    g = torch.Generator().manual_seed(0)
    noise = 0.1 * float(a.max()) * torch.randn(100, d, d, d, generator=g)
    samples = torch.stack([a, b])[torch.as_tensor(truth)] + noise
    pop = kmeans_maps(samples, 2, seed=0)
    np.testing.assert_allclose(pop.populations, [0.7, 0.3])
    assert (pop.labels == 1 - truth).all()
    tol = 4 * 0.1 * float(a.max()) / np.sqrt(30)
    assert float((pop.centres[0] - b).abs().max()) < tol and float((pop.centres[1] - a).abs().max()) < tol


def test_voxel_decoder_starts_at_its_base_map_stays_positive_and_learns_z():
    """At the start every z decodes to the base map (1e-3 everywhere); after Adam steps towards two targets
    (z = ±1 → blobs left / right) the maps are positive and differ with z as the targets do; sample_maps is
    seeded."""
    d = 8
    torch.manual_seed(0)
    dec = VoxelDecoder(d, 1, channels=4, hidden=16)
    z = torch.tensor([[-1.0], [1.0]])
    assert torch.allclose(dec.render(z), torch.full((2, d, d, d), 1e-3), rtol=1e-5)
    left = gaussian_volume(torch.tensor([[-2.0, 0.0, 0.0]]), torch.tensor([1.2]), torch.tensor([0.05]), d)
    right = gaussian_volume(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([1.2]), torch.tensor([0.05]), d)
    target = torch.stack([left, right])
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        loss = (dec.maps(z) - target).square().mean()
        loss.backward()
        opt.step()
    maps = dec.render(z)
    assert float(maps.min()) >= 0
    err = float((maps - target).square().mean() / target.square().mean())
    assert err < 0.01, err
    assert float((maps[0] * left).sum()) > float((maps[1] * left).sum())
    assert torch.equal(sample_maps(dec, 5, seed=3), sample_maps(dec, 5, seed=3))


def test_equal_mass_decoder_moves_density_but_keeps_its_total():
    """With ``equal_mass`` every decoded map sums to the base map's total, whatever ``z``; fitted (as above) to two
    targets of different mass (0.05 and 0.10 peak), it can match their shapes only: each map's mass stays the base's,
    their ratio 1 (the free decoder gets the 2× ratio)."""
    d = 8
    left = gaussian_volume(torch.tensor([[-2.0, 0.0, 0.0]]), torch.tensor([1.2]), torch.tensor([0.05]), d)
    right = gaussian_volume(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([1.2]), torch.tensor([0.10]), d)
    target, z = torch.stack([left, right]), torch.tensor([[-1.0], [1.0]])
    ratios = {}
    for equal in (False, True):
        torch.manual_seed(0)
        dec = VoxelDecoder(d, 1, channels=4, hidden=16, equal_mass=equal)
        opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
        for _ in range(150):
            opt.zero_grad()
            (dec.maps(z) - target).square().mean().backward()
            opt.step()
        maps = dec.render(z)
        if equal:
            base = torch.nn.functional.softplus(dec.base.detach(), beta=dec.beta).sum()
            torch.testing.assert_close(maps.sum((-3, -2, -1)), base.expand(2), rtol=1e-5, atol=0)
            assert float((maps[0] * left).sum()) > float((maps[1] * left).sum())  # the shapes still follow z
        ratios[equal] = float(maps[1].sum() / maps[0].sum())
    assert ratios[False] > 1.6 and abs(ratios[True] - 1) < 1e-4
