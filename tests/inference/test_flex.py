"""3DFlex's inference (inference/flex.py): the full-batch L-BFGS of the canonical map with the flows held
fixed reaches the ridge least-squares solution computed independently (the explicit matrix of the linear
map V0 → images, normal equations in float64); the model's loss is the hand-computed negative log
posterior; the noise variance of pure-noise images is their variance."""

import numpy as np
import torch

from cryolens.imaging import CTFParams, random_rotations
from cryolens.imaging.convect import project_convected
from cryolens.imaging.forward import apply_psf
from cryolens.io.dataset import read_images
from cryolens.inference.flex import FlexModel, noise_variance, refine_canonical
from cryolens.io.mrc import write_stack
from cryolens.io.particles import Particles
from cryolens.volumes.deformation import cell_mass, rigidity, smoothness

D, PX = 8, 4.0


def dataset(tmp_path, n: int = 8, images: torch.Tensor | None = None, seed: int = 0) -> Particles:
    g = torch.Generator().manual_seed(seed)
    rots = random_rotations(n, generator=g)
    shifts = (torch.rand(n, 2, generator=g) - 0.5) * 2
    du = 8000 + 4000 * torch.rand(n, generator=g)
    ctf = CTFParams.create(du, du - 200, torch.rand(n, generator=g), 300, 2.7, 0.1)
    imgs = torch.randn(n, D, D, generator=g) if images is None else images
    write_stack(tmp_path / "s.mrcs", imgs.numpy(), PX)
    return Particles(PX, D, [str(tmp_path / "s.mrcs")], np.zeros(n, int), np.arange(n), rots, shifts, ctf)


def model_for(n: int, **kw) -> FlexModel:
    torch.manual_seed(0)
    args = dict(latent_noise=0.0, prior_weight=1.0, rigidity_weight=0.7, smoothness_weight=0.3, z_step=1.0)
    args.update(kw)
    m = FlexModel(D, PX, n, 2, 2, 2, 16, torch.zeros(D, D, D), **args)
    torch.nn.init.normal_(m.volume.generator.out.weight, std=0.05)  # flows of a few tenths of a px
    m.eval()
    return m


def test_lbfgs_reaches_the_ridge_least_squares_solution(tmp_path):
    """A = the map V0 ↦ (CTF ∗ shift ∘ P_R ∘ convection along each image's fixed flow) of every image, built
    column by column from unit maps; argmin Σ‖Y − A V‖²/(2σ²) + ½ ridge ‖V‖² by numpy's solver in float64
    equals L-BFGS's result, and differs from L-BFGS started and stopped after one iteration."""
    p = dataset(tmp_path)
    model = model_for(len(p))
    model.sigma2.fill_(0.5)
    ridge = 0.3
    with torch.no_grad():
        flows = model.volume.flow(model.table.mu)
        assert float(flows.abs().max()) > 0.05
        cols = []
        for j in range(D**3):
            e = torch.zeros(D**3)
            e[j] = 1.0
            cols.append(apply_psf(project_convected(e.reshape(D, D, D), flows, p.rotations), p.shifts, p.ctf, PX)
                        .reshape(-1))
    a = torch.stack(cols, 1).double().numpy()
    y = read_images(p, np.arange(len(p))).double().reshape(-1).numpy()
    # gradient zero: (AᵀA / σ² + ridge I) V = AᵀY / σ² (the common 1/(N D²) scaling drops out)
    exact = np.linalg.solve(a.T @ a / 0.5 + ridge * np.eye(D**3), a.T @ y / 0.5)
    got = refine_canonical(model, p, np.arange(len(p)), torch.zeros(D, D, D), iterations=300, ridge=ridge)
    err = np.abs(got.double().numpy().reshape(-1) - exact).max() / np.abs(exact).max()
    assert err < 2e-3, err
    one = refine_canonical(model, p, np.arange(len(p)), torch.zeros(D, D, D), iterations=1, ridge=ridge)
    assert np.abs(one.double().numpy().reshape(-1) - exact).max() / np.abs(exact).max() > 0.05


def test_loss_is_the_negative_log_posterior_per_pixel(tmp_path):
    """forward(batch) in eval mode (no latent noise) = mean over images of
    [‖Y/s − pred‖²/(2σ²) + ½ w_p ‖z‖² + w_r rigidity + w_s smoothness] / D², with each term computed here."""
    p = dataset(tmp_path, n=4)
    model = model_for(len(p))
    model.volume.density.data = torch.rand(D, D, D)
    model.norm.fill_(2.0)
    model.sigma2.fill_(0.25)
    batch = {"index": torch.arange(4), "image": read_images(p, np.arange(4)), "rotation": p.rotations,
             "shift": p.shifts, "ctf": p.ctf}
    terms = model(batch)
    z = model.table.mu.detach()
    with torch.no_grad():
        flows = model.volume.flow(z)
        pred = apply_psf(project_convected(model.volume.density, flows, p.rotations), p.shifts, p.ctf, PX)
        sq = (pred - batch["image"] / 2.0).square().sum((-2, -1))
        rig = rigidity(flows, D, cell_mass(model.volume.density, 2))
        total = sq / 0.5 + 0.5 * z.square().sum(-1) + 0.7 * rig + 0.3 * smoothness(flows)
    assert abs(float(terms["loss"].detach()) - float(total.mean() / D**2)) < 1e-5 * float(total.mean() / D**2)
    assert float(rig.mean()) > 0


def test_noise_variance_of_pure_noise(tmp_path):
    """Images of white noise of std 3 and an empty map: σ² of the images scaled by 1.5 is (3 / 1.5)² = 4."""
    g = torch.Generator().manual_seed(1)
    p = dataset(tmp_path, n=200, images=3.0 * torch.randn(200, D, D, generator=g))
    s2 = noise_variance(p, torch.zeros(D, D, D), 1.5, n=200)
    assert abs(s2 - 4.0) < 0.15, s2
