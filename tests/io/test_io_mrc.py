"""MRC volumes and stacks: what cryolens writes is what mrcfile (an independent reader) sees."""

import numpy as np
import mrcfile
import pytest
import torch

from cryolens.errors import InputError
from cryolens.io.mrc import StackWriter, open_stack, read_volume, stack_info, write_stack, write_volume

from _io_data import sha


def test_volume_round_trip_and_header(tmp_path):
    """write_volume stores the array [z, y, x], the voxel size and the header statistics that
    mrcfile reads back; read_volume returns the same array and pixel size."""
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(16, 16, 16)).astype(np.float32)
    vol[3, 5, 7] = 10.0  # a marked voxel: checks the axis order
    path = write_volume(tmp_path / "v.mrc", torch.from_numpy(vol), 1.25)
    with mrcfile.open(path) as m:
        np.testing.assert_array_equal(m.data, vol)
        assert m.data[3, 5, 7] == 10.0
        assert m.voxel_size.x == pytest.approx(1.25) and m.voxel_size.z == pytest.approx(1.25)
        assert m.header.dmax == pytest.approx(10.0)
        assert m.header.dmean == pytest.approx(vol.mean(), abs=1e-5)
        assert m.is_volume()
    data, px = read_volume(path)
    assert data.dtype == np.float32 and px == pytest.approx(1.25)
    np.testing.assert_array_equal(data, vol)
    assert [p.name for p in tmp_path.iterdir()] == ["v.mrc"]  # no temporary left behind


def test_read_volume_converts_int16(tmp_path):
    """An int16 (mode 1) map comes back as float32 with the same values."""
    vol = np.arange(8**3, dtype=np.int16).reshape(8, 8, 8) - 200
    with mrcfile.new(tmp_path / "i.mrc") as m:
        m.set_data(vol)
        m.voxel_size = 2.0
    data, px = read_volume(tmp_path / "i.mrc")
    assert data.dtype == np.float32 and px == 2.0
    np.testing.assert_array_equal(data, vol.astype(np.float32))


def test_stack_writer_chunks_in_any_order(tmp_path):
    """Chunks written out of order give the same file as the whole array; the header statistics
    (accumulated chunk by chunk) equal numpy's over all images; it is an image stack with the voxel size."""
    rng = np.random.default_rng(2)
    images = (rng.normal(size=(45, 16, 16)) * 3 + 1).astype(np.float32)
    path = tmp_path / "s.mrcs"
    with StackWriter(path, 45, 16, 0.9) as w:
        for start, stop in ((20, 30), (0, 20), (30, 45)):
            w.write(start, torch.from_numpy(images[start:stop]))
        assert not path.exists()  # only the temporary exists until close
    with mrcfile.open(path) as m:
        np.testing.assert_array_equal(m.data, images)
        assert m.is_image_stack()
        assert m.voxel_size.x == pytest.approx(0.9)
        assert m.header.dmin == pytest.approx(images.min())
        assert m.header.dmax == pytest.approx(images.max())
        assert m.header.dmean == pytest.approx(images.mean(dtype=np.float64), abs=1e-5)
        assert m.header.rms == pytest.approx(images.std(dtype=np.float64), rel=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.mrcs"]


def test_stack_writer_failure_keeps_old_file(tmp_path):
    """An error inside the block, or images never written, leave the previous file untouched
    and no temporary behind."""
    path = write_stack(tmp_path / "s.mrcs", np.ones((4, 8, 8)), 1.0)
    before = sha(path)
    with pytest.raises(RuntimeError, match="boom"):
        with StackWriter(path, 10, 8, 1.0) as w:
            w.write(0, np.zeros((5, 8, 8)))
            raise RuntimeError("boom")
    with pytest.raises(ValueError, match="never written"):
        with StackWriter(path, 10, 8, 1.0) as w:
            w.write(0, np.zeros((5, 8, 8)))
    with pytest.raises(ValueError, match="overlap"):
        with StackWriter(path, 10, 8, 1.0) as w:
            w.write(0, np.zeros((5, 8, 8)))
            w.write(4, np.zeros((5, 8, 8)))
    assert sha(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.mrcs"]


def test_open_stack_is_a_readonly_memmap(tmp_path):
    """open_stack maps the file (np.memmap), returns the right images and cannot write the file."""
    images = np.random.default_rng(3).normal(size=(6, 16, 16)).astype(np.float32)
    path = write_stack(tmp_path / "s.mrcs", images, 1.0)
    before = sha(path)
    mm = open_stack(path)
    assert isinstance(mm, np.memmap) or isinstance(mm.base, np.memmap)
    np.testing.assert_array_equal(mm[4], images[4])
    with pytest.raises(ValueError):
        mm[0, 0, 0] = 5.0
    del mm
    assert sha(path) == before
    assert stack_info(path) == (6, 16, pytest.approx(1.0))


def test_single_image_mrc_is_a_one_image_stack(tmp_path):
    """A 2D .mrc (one image) opens as a (1, D, D) stack."""
    with mrcfile.new(tmp_path / "one.mrc") as m:
        m.set_data(np.eye(8, dtype=np.float32))
    assert open_stack(tmp_path / "one.mrc").shape == (1, 8, 8)


def test_read_volume_rejects_a_stack_shape_and_2d(tmp_path):
    """A non-cubic 3D file or a 2D image is not a volume: InputError naming the file."""
    write_stack(tmp_path / "s.mrcs", np.zeros((5, 8, 8)), 1.0)
    with pytest.raises(InputError, match=r"s\.mrcs.*not a cube"):
        read_volume(tmp_path / "s.mrcs")
    with mrcfile.new(tmp_path / "one.mrc") as m:
        m.set_data(np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(InputError, match=r"one\.mrc.*not a 3D volume"):
        read_volume(tmp_path / "one.mrc")
