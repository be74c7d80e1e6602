"""ParticleDataset and iterate_batches: the right image for each particle, streamed from maps."""

import pickle

import mrcfile
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cryolens.errors import InputError
from cryolens.io.dataset import ParticleDataset, iterate_batches
from cryolens.io.mrc import write_stack
from cryolens.io.particles import Particles

from _io_data import make_stack, random_particles


def _two_stack_particles(tmp_path):
    a = make_stack(tmp_path / "a.mrcs", n=7, seed=1)
    b = make_stack(tmp_path / "b.mrcs", n=9, seed=2)
    files = np.array([0] * 7 + [1] * 9)
    index = np.concatenate([np.arange(7)[::-1], np.arange(9)])
    p = Particles(1.5, 16, [str(a), str(b)], files, index)
    with mrcfile.open(a) as ma, mrcfile.open(b) as mb:
        truth = np.concatenate([ma.data[::-1], mb.data]).copy()
    return p, truth


def test_getitem_returns_the_particles_image_and_metadata(tmp_path):
    """Item i holds image (file, index) of particle i as mrcfile reads it, its rotation, shift and
    CTF values; without poses there is no rotation and the shift is zero."""
    stack = make_stack(tmp_path / "p.mrcs", n=12)
    p = random_particles(stack, n=12, seed=1)
    with mrcfile.open(stack) as m:
        data = m.data.copy()
    ds = ParticleDataset(p)
    assert len(ds) == 12
    for i in (0, 5, 11):
        item = ds[i]
        assert item["index"] == i and item["image"].dtype == torch.float32
        np.testing.assert_array_equal(item["image"].numpy(), data[p.image_index[i]])
        torch.testing.assert_close(item["rotation"], p.rotations[i])
        torch.testing.assert_close(item["shift"], p.shifts[i])
        assert float(item["ctf"]["defocus_u"]) == pytest.approx(float(p.ctf.defocus_u[i]))
    bare = ParticleDataset(Particles(1.5, 16, [str(stack)], np.zeros(12), np.arange(12)))
    item = bare[3]
    assert "rotation" not in item and "ctf" not in item
    assert torch.equal(item["shift"], torch.zeros(2))


def test_dataloader_and_pickling_do_not_copy_the_stack(tmp_path):
    """A DataLoader batches items; pickling the dataset (as DataLoader workers do) carries the
    file names, not the mapped images."""
    stack = make_stack(tmp_path / "p.mrcs", n=50, d=32)
    p = random_particles(stack, n=50, d=32, seed=2)
    ds = ParticleDataset(p)
    _ = ds[0]  # opens the map
    assert len(pickle.dumps(ds)) < 50 * 32 * 32 * 4 / 4
    copy = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(copy[7]["image"], ds[7]["image"])
    batch = next(iter(DataLoader(ds, batch_size=8, shuffle=False)))
    assert batch["image"].shape == (8, 32, 32) and batch["rotation"].shape == (8, 3, 3)
    assert batch["ctf"]["voltage"].shape == (8,)


@pytest.mark.parametrize("batch_size", [1, 5, 16])
def test_iterate_batches_over_two_stacks(tmp_path, batch_size):
    """iterate_batches yields every requested particle once, in the requested order, with its
    image from the right stack and index (checked against mrcfile), for any batch size."""
    p, truth = _two_stack_particles(tmp_path)
    order = np.random.default_rng(0).permutation(16)
    seen = []
    for idx, images in iterate_batches(p, batch_size, indices=order):
        assert images.dtype == torch.float32 and images.shape[1:] == (16, 16)
        assert len(idx) <= batch_size
        np.testing.assert_array_equal(images.numpy(), truth[idx])
        seen.extend(idx.tolist())
    assert seen == order.tolist()
    all_idx = np.concatenate([i for i, _ in iterate_batches(p, 4)])
    np.testing.assert_array_equal(all_idx, np.arange(16))


def test_nan_pixel_names_stack_and_image(tmp_path):
    """A NaN pixel in image 7 raises InputError naming the stack and 'image 7', from __getitem__
    and from iterate_batches; other images still read."""
    images = np.random.default_rng(3).normal(size=(10, 16, 16)).astype(np.float32)
    images[7, 3, 4] = np.nan
    images[9, 0, 0] = np.inf
    stack = write_stack(tmp_path / "bad.mrcs", images, 1.0)
    p = Particles(1.0, 16, [str(stack)], np.zeros(10), np.arange(10))
    ds = ParticleDataset(p)
    assert torch.isfinite(ds[6]["image"]).all()
    with pytest.raises(InputError, match=r"bad\.mrcs: image 7 \(0-based\)"):
        ds[7]
    with pytest.raises(InputError, match=r"bad\.mrcs: image 7 "):
        list(iterate_batches(p, 4))
    with pytest.raises(InputError, match=r"bad\.mrcs: image 9 "):
        list(iterate_batches(p, 4, indices=[9, 0]))
