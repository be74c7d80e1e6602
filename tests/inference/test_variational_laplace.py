"""Laplace pose spreads of FSTdiff (:mod:`cryolens.inference.variational_laplace`) against the errors they
claim to describe: images of a known map at known poses plus white noise of the model's power, the pose
means started 2° off, moved to each image's mode by Gauss-Newton; the actual error of every mode, per
Lie-algebra axis, against the Laplace marginal variance."""

import math

import numpy as np
import torch

from cryolens.imaging.ctf import CTFParams
from cryolens.imaging.forward import shift_and_ctf
from cryolens.imaging.fft import fft3_centered, ifft2_centered
from cryolens.imaging.grids import freq_grid_3d
from cryolens.imaging.rotations import matrix_to_rotvec, random_rotations, rotvec_to_matrix
from cryolens.inference.variational import VariationalReconstruction
from cryolens.inference.variational_laplace import laplace_poses
from cryolens.inference.variational_pose import VariationalPoseTable
from cryolens.io.mrc import write_stack
from cryolens.io.particles import Particles
from cryolens.volumes.variational import VariationalVoxelVolume

D, N, SIGMA2 = 16, 300, 8.0


def _setup(tmp_path):
    g = torch.Generator().manual_seed(0)
    r = freq_grid_3d(D, dtype=torch.float64) * D  # px from the centre (x, y, z)
    centres = torch.randn(6, 3, generator=g, dtype=torch.float64) * 2.5
    blobs = sum(torch.exp(-((r - c).square().sum(-1)) / 3.0) for c in centres)
    vol = VariationalVoxelVolume(D, blobs.float(), init_logvar=-20.0, learn_prior=False)  # the map known
    rots = random_rotations(N, g).double()
    model = VariationalReconstruction(vol, None, N, 2.0, torch.full((D // 2 + 1,), SIGMA2), learn_noise=False)
    ctf = CTFParams.create(5000 + 20000 * torch.rand(N, generator=g), bfactor=400 * torch.rand(N, generator=g))
    clean = shift_and_ctf(model.slices(fft3_centered(blobs).to(torch.complex128), rots), None, ctf, 2.0)
    images = ifft2_centered(clean).real + torch.randn(N, D, D, generator=g, dtype=torch.float64) * math.sqrt(SIGMA2) / D
    write_stack(tmp_path / "s.mrcs", images.float().numpy(), 2.0)
    particles = Particles(2.0, D, [str(tmp_path / "s.mrcs")], np.zeros(N, int), np.arange(N), rots.float(),
                          torch.zeros(N, 2), ctf)  # B-factors 0–400 Å²: images unequally informative
    axis = torch.randn(N, 3, generator=g, dtype=torch.float64)
    start = rots @ rotvec_to_matrix(axis / axis.norm(dim=-1, keepdim=True) * math.radians(2.0))
    model.poses = VariationalPoseTable(start.float(), torch.zeros(N, 2), 0.03, None)
    return model, particles, rots


def test_laplace_spreads_describe_the_gauss_newton_modes(tmp_path):
    """After 4 Gauss-Newton steps from 2° off, each mode's error per axis over its Laplace standard deviation
    has mean square 1 ± 0.15 over all 900 axis errors (the χ²₁ mean's standard error is 0.05) and 1 ± 0.3 in
    each third of the images sorted by spread (calibrated where the spread is small and where it is large);
    the spreads vary (B-factors) and predict the errors (Spearman > 0.25); spreads 1.3 times too wide or
    too narrow fail the mean-square check; the table's log-spreads hold the result."""
    model, particles, truth = _setup(tmp_path)
    out = laplace_poses(model, particles, "cpu", newton=4)
    est = model.poses.base.double() @ rotvec_to_matrix(model.poses.delta.detach().double())
    err = matrix_to_rotvec(truth.transpose(-1, -2) @ est)  # R̂ = R exp([ε]×)
    z2 = err.square() / out["rot_var"]
    assert abs(float(z2.mean()) - 1) < 0.15, float(z2.mean())
    assert abs(float((z2 / 1.3**2).mean()) - 1) > 0.15 and abs(float((z2 * 1.3**2).mean()) - 1) > 0.15
    spread, angle = out["rot_var"].sum(-1).sqrt(), err.norm(dim=-1)
    order = spread.argsort()
    for third in order.chunk(3):
        assert abs(float(z2[third].mean()) - 1) < 0.3
    assert float(spread.max() / spread.min()) > 2
    rank = lambda x: x.argsort().argsort().double()  # noqa: E731
    assert float(torch.corrcoef(torch.stack([rank(spread), rank(angle)]))[0, 1]) > 0.25
    torch.testing.assert_close(model.poses.log_rot_std.detach().exp().square().double(), out["rot_var"], rtol=1e-5,
                               atol=0)
