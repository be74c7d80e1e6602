"""E2GMM's parts against independent computations: the encoder input is each image's own gradient (central
finite differences of that image's FRC loss in float64, unaffected by the other images of the batch), the
zero-started decoder leaves the mixture at its neutral parameters for every z, and the predicted transform
equals the FFT of the shifted, CTF-filtered real-space image of the forward model."""

import numpy as np
import torch

from cryolens.imaging import CTFParams, fft2_centered, random_rotations
from cryolens.imaging.forward import ProjectorForward, shift_and_ctf
from cryolens.imaging.gaussian import gaussian_projection
from cryolens.inference.e2gmm import _batch_gradients, _normalise_kinds, predicted_transforms
from cryolens.inference.frc import frc_loss
from cryolens.volumes.gaussian_mixture import GaussianMixtureVolume
from cryolens.volumes.mixture_decoder import MixtureDecoder

D, PX = 16, 2.0


def _mixture(decoder=None, zdim=0) -> GaussianMixtureVolume:
    g = torch.Generator().manual_seed(3)
    centers = (torch.rand(5, 3, generator=g, dtype=torch.float64) - 0.5) * 14
    return GaussianMixtureVolume(centers, 1 + torch.rand(5, generator=g, dtype=torch.float64),
                                 3 + torch.rand(5, generator=g, dtype=torch.float64), D, PX, decoder, zdim, learn=())


def _batch(n: int = 3) -> dict:
    g = torch.Generator().manual_seed(4)
    ctf = CTFParams.create(torch.full((n,), 9000.0), torch.full((n,), 8500.0), torch.zeros(n), 300, 2.7, 0.1)
    return {"image": torch.randn(n, D, D, generator=g, dtype=torch.float64),
            "rotation": random_rotations(n, generator=g), "shift": torch.randn(n, 2, generator=g), "ctf": ctf}


def _image_loss(vol: GaussianMixtureVolume, batch: dict, i: int, band) -> float:
    """Image i's FRC loss in float64 from the unbatched closed-form projection (imaging.gaussian)."""
    b = {k: v[i:i + 1] for k, v in batch.items()}
    proj = gaussian_projection(vol.centers / PX, vol.sigmas / PX, vol.amplitudes, b["rotation"].double(), D)
    pred = shift_and_ctf(fft2_centered(proj), b["shift"].double(), b["ctf"], PX)
    return float(frc_loss(pred, fft2_centered(b["image"]), *band))


def test_encoder_input_is_each_images_own_gradient():
    """For images 0 and 2 of a batch of 3, the gradient w.r.t. centre 1's y, amplitude 3 and width 4 (band 1..5)
    equals the central difference (h = 1e-5) of that image's loss alone."""
    vol, batch = _mixture(), _batch()
    band = (1, 5)
    with torch.no_grad():
        for name in ("centers", "amplitudes", "sigmas"):
            getattr(vol, name).data = getattr(vol, name).data.float()
    grads = _batch_gradients(vol, {**batch, "image": batch["image"].float()}, [band])
    n = 5
    vol64 = _mixture()
    for i in (0, 2):
        for kind, index, column in (("centers", (1, 1), 3 * 1 + 1), ("amplitudes", 3, 3 * n + 3),
                                    ("sigmas", 4, 4 * n + 4)):
            values = getattr(vol64, kind)
            old = float(values[index])
            diffs = []
            for h in (1e-5, -1e-5):
                values[index] = old + h
                diffs.append(_image_loss(vol64, batch, i, band))
            values[index] = old
            fd = (diffs[0] - diffs[1]) / 2e-5
            assert abs(float(grads[i, column]) - fd) < 2e-3 * max(1.0, abs(fd)), (kind, i, float(grads[i, column]), fd)


def test_each_kind_of_gradient_is_divided_by_its_own_std_in_place():
    """_normalise_kinds over chunks of 3 rows equals dividing the centre, amplitude and width columns each by
    torch's std of the whole block (float64), and writes into the table it was given (no copy)."""
    n, bands = 4, 2
    g = torch.Generator().manual_seed(5)
    table = torch.randn(10, 5 * n * bands, generator=g) * torch.linspace(0.1, 30, 5 * n * bands)
    expected, start = [], 0
    for size in (3 * n * bands, n * bands, n * bands):
        block = table[:, start:start + size].double()
        expected.append(block / block.std())
        start += size
    out = _normalise_kinds(table, n, bands, rows=3)
    assert out.data_ptr() == table.data_ptr()
    assert torch.allclose(out.double(), torch.cat(expected, 1), rtol=1e-5, atol=0)


def test_zero_started_decoder_is_the_neutral_model_and_moves_after_a_step():
    """At initialisation params(z) equal the neutral parameters for any z; after one Adam step on a loss that
    wants centre 0 to move, the decoded centres depend on z."""
    dec = MixtureDecoder(2, 5, layers=2, hidden=16, dropout=0.0, batchnorm=True, shift_scale=10.0,
                         amplitude_scale=0.5)
    vol = _mixture(dec, 2).float()
    z = torch.randn(4, 2)
    c, a, s = vol.params(z)
    torch.testing.assert_close(c, vol.centers[None].expand(4, -1, -1))
    torch.testing.assert_close(a, vol.amplitudes[None].expand(4, -1))
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    (vol.params(z)[0][:, 0, 0] * z[:, 0]).sum().backward()
    opt.step()
    c2 = vol.params(z)[0]
    assert float((c2 - c2.mean(0)).detach().abs().max()) > 1e-4


def test_predicted_transform_is_the_fft_of_the_projector_forward_model():
    """predicted_transforms = FFT of ProjectorForward's real image (projection, shift, CTF) of the neutral map."""
    vol, batch = _mixture().float(), _batch()
    rot = batch["rotation"].float()
    pred = predicted_transforms(vol, rot, None, batch["shift"], batch["ctf"], PX)
    real = ProjectorForward()(vol, rot, batch["shift"], batch["ctf"], PX)
    # the −Nyquist row and column (index 0) are not Hermitian after a sub-pixel shift: a real image drops them
    np.testing.assert_allclose(pred[:, 1:, 1:].numpy(), fft2_centered(real)[:, 1:, 1:].numpy(),
                               atol=1e-4 * float(pred.abs().max()))
