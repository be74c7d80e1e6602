"""The variational volume under amortized poses (``cryoposenet --set variational_volume=true``) against
independent computations: the training loss is, in expectation over its reparametrised draws of q(V), the
closed-form per-pixel negative ELBO at the encoder's poses (the expected residual power written with the
trilinear weights, the KL shared over the N images); trained alone, q(V)'s variances reach the mean-field
optimum ``1/(A_jj + 1/τ²)`` with ``A_jj`` the data precision summed by :func:`data_precision`."""

import sys
from pathlib import Path

import torch

from cryolens.inference.amortized_variational import AmortizedVariationalVolume
from cryolens.inference.variational_calibrate import data_precision
from cryolens.inference.variational_setup import volume_model
from cryolens.io.dataset import read_images
from cryolens.methods import get

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "methods"))
from _drgn_data import blob_dataset  # noqa: E402

SMALL = {"enc_channels": 4, "enc_max_channels": 8, "enc_hidden": [16], "norm_images": 40, "max_shift": 1.0,
         "variational_volume": True, "init_logvar": 0.0}


def _model(tmp_path, n: int = 40, d: int = 8, **options):
    particles, _ = blob_dataset(tmp_path, n, d, noise=0.5)
    torch.manual_seed(0)  # the encoder's initial weights
    cfg = get("cryoposenet").config({**SMALL, **options})
    images = read_images(particles, range(n))
    elbo = volume_model(particles, cfg, images, None)
    model = AmortizedVariationalVolume(d, particles.pixel_size, cfg, elbo, cfg.volume_lr)
    model.set_norm(float(images.std()))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a mean near zero, variances as large as the prior's
        model.elbo.volume.scaled_mean.copy_(0.1 * torch.randn(model.elbo.volume.scaled_mean.shape, generator=g))
    return particles, images, model


def test_training_loss_is_the_monte_carlo_elbo_at_the_encoders_poses(tmp_path):
    """``forward`` (one draw of q(V) per step) averaged over 1,000 steps equals the analytic ELBO (the mean
    slice plus ``C² Σ a_j² E|V_j − μ_j|²`` per pixel, plus KL/N) at the encoder's poses, to 4 standard errors;
    the mean-only loss (no sampling) is more than 10 standard errors away. (The KL's weight is the next test's.)"""
    particles, images, model = _model(tmp_path)
    model.eval()  # the encoder deterministic; forward still draws q(V)
    batch = {"image": images, "ctf": particles.ctf}
    torch.manual_seed(1)
    with torch.no_grad():
        losses = torch.stack([model(batch)["loss"] for _ in range(1000)]).double()
        _, _, rot, sh = model.branches(batch["image"], batch["ctf"])
        elbo = model.elbo
        mean_only = float(elbo.given_pose_loss(batch, elbo.volume.mean_grid(), rot, sh).mean())
        elbo.analytic = True
        analytic = float(elbo.given_pose_loss(batch, elbo.volume.mean_grid(), rot, sh).mean())
    se = float(losses.std()) / 1000**0.5
    assert abs(float(losses.mean()) - analytic) < 4 * se
    assert abs(mean_only - analytic) > 10 * se


def test_variances_reach_the_mean_field_optimum(tmp_path):
    """With the analytic expectation, the encoder frozen and the true poses given, Adam on q(V)'s log-variances
    alone (the per-image losses of :meth:`image_errors` averaged over all 40 images, 500 steps) brings every
    free voxel's ``s²`` to ``1/(A_jj + 1/τ²)`` within 2 % (median) and 10 % (99th percentile), where more than
    10 voxels are dominated by the prior (``A_jj τ² < 0.1``; within 5 % each): a KL left out, or counted once
    per image instead of once per dataset, would put those ~10× (or ~N×) off."""
    particles, images, model = _model(tmp_path, expectation="analytic")
    elbo, vol = model.elbo, model.elbo.volume
    opt = torch.optim.Adam([vol.logvar], lr=0.3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.99)
    rot, sh = particles.rotations, particles.shifts
    for _ in range(500):
        opt.zero_grad()
        model.image_errors(images, rot, sh, particles.ctf).mean().backward()
        opt.step()
        sched.step()
    a = data_precision(elbo, particles)
    tau2 = vol.log_prior_var.detach().exp()[vol.shells].double()
    want = 1 / (a + 1 / tau2)
    keep = vol.free & ~vol.dc
    ratio = (vol.logvar.detach().exp().double() / want)[keep]
    assert float((ratio - 1).abs().median()) < 0.02
    assert float((ratio - 1).abs().quantile(0.99)) < 0.10
    weak = keep & (a * tau2 < 0.1)  # voxels whose posterior is mostly the prior
    assert int(weak.sum()) > 10
    assert float((vol.logvar.detach().exp().double() / want)[weak].sub(1).abs().max()) < 0.05
