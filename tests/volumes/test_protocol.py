"""The interfaces as code: every volume parametrization satisfies the VolumeModel protocol (and the real-space
grid the RealSpaceProjector one), every forward model the ForwardModel protocol, and each protocol path
gives exactly the numbers of the direct call it stands for."""

import pytest
import torch

from cryolens.imaging import CTFParams, gaussian_volume, random_rotations, render_images
from cryolens.imaging.fft import ifft2_centered
from cryolens.imaging.forward import (FourierSliceForward, ForwardModel, ImageForward, ProjectorForward,
                                      forward_fourier)
from cryolens.imaging.slice import prepare_volume_ft
from cryolens.volumes import (NeuralField, RealSpaceProjector, RealVoxelVolume, VolumeModel, VoxelVolume,
                              render_one)

D = 16


def _blob() -> torch.Tensor:
    return gaussian_volume(torch.tensor([[2.0, -1.0, 3.0], [-3.0, 2.0, 0.0]]), torch.tensor([2.0, 1.5]),
                           torch.tensor([1.0, 0.6]), D)


def _coords(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(2, 50, 3, generator=g) - 0.5) * 0.9  # inside and just outside the Nyquist sphere


def _models():
    torch.manual_seed(0)
    return {"neural": NeuralField(D, 2, 1, 16), "neural-hartley": NeuralField(D, 0, 1, 16, domain="hartley"),
            "voxel": VoxelVolume(D, _blob()), "real-voxel": RealVoxelVolume(D, _blob())}


@pytest.mark.parametrize("name", ["neural", "neural-hartley", "voxel", "real-voxel"])
def test_each_volume_satisfies_the_protocol_and_its_values_agree(name):
    """isinstance(VolumeModel) holds; hartley() is Re F − Im F of fourier() (the convention), F(−k) = conj
    F(k) (a real map), and render() gives one (D, D, D) float32 map per row of z (one for None)."""
    model = _models()[name]
    assert isinstance(model, VolumeModel)
    z = torch.randn(2, model.zdim) if model.zdim else None
    k = _coords()
    with torch.no_grad():
        f, h = model.fourier(k, z), model.hartley(k, z)
        assert f.shape == h.shape == (2, 50) and f.is_complex() and not h.is_complex()
        torch.testing.assert_close(h, f.real - f.imag, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.fourier(-k, z), f.conj(), rtol=1e-5, atol=1e-5)
    maps = model.render(z[:1] if z is not None else None)
    assert maps.shape == (1, D, D, D) and maps.dtype == torch.float32
    torch.testing.assert_close(render_one(model, z[:1] if z is not None else None), maps[0])


def test_protocol_names_are_the_direct_calls():
    """hartley() of the neural field and the Fourier voxel grid is exactly forward(); the real-space grid's
    Fourier values are exactly those of a Fourier grid made from the same density."""
    models = _models()
    k = _coords(1)
    z = torch.randn(2, 2)
    with torch.no_grad():
        torch.testing.assert_close(models["neural"].hartley(k, z), models["neural"](k, z), rtol=0, atol=0)
        torch.testing.assert_close(models["voxel"].hartley(k), models["voxel"](k), rtol=0, atol=0)
        torch.testing.assert_close(models["real-voxel"].fourier(k), models["voxel"].fourier(k), rtol=0, atol=0)


def test_only_the_real_space_grid_projects_itself():
    """RealVoxelVolume is a RealSpaceProjector; the neural field and the Fourier grid are not."""
    models = _models()
    assert isinstance(models["real-voxel"], RealSpaceProjector)
    assert not isinstance(models["neural"], RealSpaceProjector)
    assert not isinstance(models["voxel"], RealSpaceProjector)


def test_forward_models_satisfy_the_protocol_and_equal_the_render_functions():
    """Each forward model is a ForwardModel and gives bit-for-bit the images of the function it wraps:
    FourierSliceForward = forward_fourier on the 2× oversampled transform (and render_images' images to
    float32 rounding); ImageForward = render_images (both projectors); ProjectorForward of a real-space grid =
    render_images(projector="real") of its density."""
    vol = _blob()
    rots = random_rotations(5, generator=torch.Generator().manual_seed(2))
    shifts = torch.tensor([[0.5, -1.0], [0.0, 0.0], [1.5, 0.3], [-0.7, 0.2], [0.1, 0.9]])
    ctf = CTFParams.create(torch.full((5,), 9000.0), torch.full((5,), 8700.0), torch.zeros(5), 300, 2.7, 0.1)
    px = 2.0
    models = [FourierSliceForward(), ImageForward("fourier"), ImageForward("real"), ProjectorForward()]
    assert all(isinstance(m, ForwardModel) for m in models)
    assert [m.space for m in models] == ["fourier", "real", "real", "real"]
    f = models[0](vol, rots, shifts, ctf, px)
    torch.testing.assert_close(f, forward_fourier(prepare_volume_ft(vol, pad=2), rots, D, shifts, ctf, px),
                               rtol=0, atol=0)
    direct = render_images(vol, rots, shifts, ctf, px)
    torch.testing.assert_close(models[1](vol, rots, shifts, ctf, px), direct, rtol=0, atol=0)
    # render_images computes only the kx >= 0 half of the transform (imaging/half_volume.py): the same images
    # as the full transform's to float32 rounding (tests/imaging/test_half_volume.py: to 1e-10 in float64)
    torch.testing.assert_close(ifft2_centered(f).real, direct, rtol=0, atol=1e-5 * float(direct.abs().max()))
    real = render_images(vol, rots, shifts, ctf, px, projector="real")
    torch.testing.assert_close(models[2](vol, rots, shifts, ctf, px), real, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(models[3](RealVoxelVolume(D, vol), rots, shifts, ctf, px), real, rtol=0, atol=0)
