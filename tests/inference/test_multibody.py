"""Multi-body geometry against closed forms: a body seen under body_poses projects exactly as the moved body
(Gaussian mixture, analytic projection); moved_maps equals the map of the moved centres; body weights are a
partition of unity that gives each body its own region."""

from __future__ import annotations

import numpy as np
import torch

from cryolens.imaging.gaussian import gaussian_projection_ft, gaussian_volume
from cryolens.imaging.rotations import random_rotations
from cryolens.imaging.shift import phase_shift
from cryolens.inference.multibody import body_poses, body_weights, moved_maps

D, PX = 24, 1.5


def _motion(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return random_rotations(n, generator=g).double(), torch.randn(n, 3, generator=g, dtype=torch.float64) * 2


def test_body_seen_under_its_pose_is_the_moved_body():
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(6, 3, generator=g, dtype=torch.float64) * 3  # px
    sig, amp = torch.full((6,), 1.5, dtype=torch.float64), torch.rand(6, generator=g, dtype=torch.float64) + 0.5
    origin = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) * PX  # Å
    rot = random_rotations(4, generator=g).double()
    shifts = torch.randn(4, 2, generator=g, dtype=torch.float64)
    body_rot, body_t = _motion(4, g)
    o = origin / PX
    for i in range(4):
        moved = (centers - o) @ body_rot[i].T + o + body_t[i] / PX
        want = phase_shift(gaussian_projection_ft(moved, sig, amp, rot[i:i + 1], D), shifts[i:i + 1])
        r, s = body_poses(rot[i:i + 1], shifts[i:i + 1], body_rot[i:i + 1], body_t[i:i + 1], origin, PX)
        got = phase_shift(gaussian_projection_ft(centers, sig, amp, r, D), s)
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-9 * float(want.abs().max()))


def test_moved_maps_is_the_map_of_the_moved_centres_and_weights_partition_the_box():
    centers = torch.tensor([[-4.0, 0.0, 0.0], [-3.0, 2.0, 0.0], [4.0, 0.0, 1.0], [5.0, -1.0, 0.0]],
                           dtype=torch.float64)  # px
    groups = torch.tensor([0, 0, 1, 1])
    sig, amp = torch.full((4,), 2.0, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    w = body_weights(centers * PX, groups, D, PX, softness=1.0)
    torch.testing.assert_close(w.sum(0), torch.ones(D, D, D, dtype=torch.float64))
    c = D // 2
    assert float(w[0, c, c, c - 4]) > 0.99 and float(w[1, c, c + 4, c + 5]) > 0.99  # [z, y, x] at each body
    vols = torch.stack([gaussian_volume(centers[groups == k], sig[:2], amp[:2], D) for k in (0, 1)])
    origins = torch.stack([centers[groups == k].mean(0) for k in (0, 1)]) * PX
    rot = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
    angle = torch.tensor([0.0, 0.4], dtype=torch.float64)  # body 0 still, body 1 turned about z and moved
    for b in range(2):
        rot[b, 0] = torch.eye(3, dtype=torch.float64)
        ca, sa = torch.cos(angle[b] * (b + 1)), torch.sin(angle[b] * (b + 1))
        rot[b, 1] = torch.tensor([[ca, -sa, 0.0], [sa, ca, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    t = torch.zeros(2, 2, 3, dtype=torch.float64)
    t[:, 1] = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64) * PX
    got = moved_maps(vols, rot, t, origins, PX)
    for b in range(2):
        o1 = origins[1] / PX
        moved = torch.cat([centers[:2], (centers[2:] - o1) @ rot[b, 1].T + o1 + t[b, 1] / PX])
        want = gaussian_volume(moved, sig, amp, D)
        # trilinear resampling of a σ = 2 px Gaussian: a few per cent of the peak
        assert float((got[b] - want).abs().max()) < 0.05 * float(want.max())
        moved_by = float((want - gaussian_volume(centers, sig, amp, D)).abs().max())
        assert float((got[b] - want).abs().max()) < 0.2 * moved_by


def test_best_subsets_is_the_least_squares_fit_with_a_free_scale():
    """Every subset tried (G = 5): each row's choice is the subset whose templates, summed and scaled freely, leave
    the smallest residual, found here by least squares in float64 over all 31 subsets; backward elimination (G = 14,
    well separated templates, weak noise) finds the subset the images were made of."""
    from cryolens.inference.multibody import best_subsets

    g = torch.Generator().manual_seed(3)
    p = torch.randn(40, 5, 30, generator=g, dtype=torch.float64)
    truth = torch.rand(40, 5, generator=g) < 0.5
    truth[:, 0] = True
    y = 1.7 * (truth[..., None] * p).sum(1) + 1.5 * torch.randn(40, 30, generator=g, dtype=torch.float64)
    got = best_subsets(torch.einsum("bgk,bhk->bgh", p, p), torch.einsum("bgk,bk->bg", p, y))
    subsets = [s for s in np.ndindex(*(2,) * 5) if any(s)]
    for i in range(40):
        resid = []
        for s in subsets:
            t = (p[i].numpy() * np.array(s)[:, None]).sum(0)
            scale = max(float(t @ y[i].numpy()) / float(t @ t), 0.0)
            resid.append(float(np.sum((y[i].numpy() - scale * t) ** 2)))
        assert tuple(got[i].int().tolist()) == subsets[int(np.argmin(resid))]
    assert (got == truth).all(1).float().mean() > 0.6  # and with this noise mostly the true subset
    p = torch.randn(20, 14, 400, generator=g, dtype=torch.float64)
    truth = torch.rand(20, 14, generator=g) < 0.5
    truth[:, 0] = True
    y = 0.8 * (truth[..., None] * p).sum(1) + 0.3 * torch.randn(20, 400, generator=g, dtype=torch.float64)
    got = best_subsets(torch.einsum("bgk,bhk->bgh", p, p), torch.einsum("bgk,bk->bg", p, y))
    assert (got == truth).all()


def test_population_prior_is_the_em_fixed_point_and_most_probable_uses_it():
    """Images drawn from three of four unit Gaussians (means 0, 3, 6 in proportions 0.6 / 0.3 / 0.1; the fourth,
    at 3.8, shows none) and scored by their exact log-likelihoods under all four: the populations are a fixed point
    of the EM update (each the mean posterior under them, checked in float64 numpy), near the true proportions with
    the unseen candidate's near zero, and the pick under them is right more often than the plain maximum
    likelihood (which gives the unseen candidate the images between 3 and 6). Measured: populations 0.607 / 0.286 /
    0.090 / 0.017; right 92 % against 82 %."""
    from cryolens.inference.multibody import most_probable, population_prior

    rng = np.random.default_rng(0)
    truth = rng.choice(3, size=4000, p=[0.6, 0.3, 0.1])
    means = np.array([0.0, 3.0, 6.0, 3.8])
    x = means[truth] + rng.normal(0.0, 1.0, 4000)
    ll = torch.as_tensor(-0.5 * (x[:, None] - means[None]) ** 2)
    log_pi = population_prior(ll, iterations=2000).numpy()
    post = np.exp(ll.numpy() + log_pi - (ll.numpy() + log_pi).max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    np.testing.assert_allclose(np.exp(log_pi), post.mean(0), atol=1e-4)
    pi = np.exp(log_pi)
    assert abs(pi[0] - 0.6) < 0.03 and abs(pi[2] - 0.1) < 0.03 and pi[3] < 0.08, pi
    ml = (ll.argmax(1).numpy() == truth).mean()
    assert (most_probable(ll).numpy() == truth).mean() > ml + 0.03, ml
