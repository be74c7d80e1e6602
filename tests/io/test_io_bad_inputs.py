"""Bad inputs raise InputError with one line that names the file (and leave the file unchanged)."""

import mrcfile
import numpy as np
import pytest

from cryolens.errors import InputError
from cryolens.io.cryodrgn import read_cryodrgn
from cryolens.io.cryosparc import read_cs
from cryolens.io.mrc import open_stack, read_volume, write_volume
from cryolens.io.star import read_star, write_star

from _io_data import make_stack, random_particles, sha, write_star_by_hand


def _raw_stack(path, images):
    """A stack written with mrcfile directly (cryolens' own writer refuses odd boxes)."""
    with mrcfile.new(path) as m:
        m.set_data(np.asarray(images, dtype=np.float32))
        m.voxel_size = 1.0
    return path


def _raises(fn, path, pattern):
    """fn(path) raises a one-line InputError naming ``path`` and matching ``pattern``; ``path``'s
    bytes are unchanged."""
    before = sha(path) if path.exists() else None
    with pytest.raises(InputError) as err:
        fn(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert path.name in msg, msg
    assert pattern in msg, msg
    if before is not None:
        assert sha(path) == before


def test_random_bytes_are_not_an_mrc(tmp_path):
    """A file of random bytes is 'not a readable MRC file' for volumes and stacks."""
    path = tmp_path / "junk.mrc"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    _raises(read_volume, path, "not a readable MRC file")
    _raises(open_stack, path, "not a readable MRC file")
    short = tmp_path / "tiny.mrcs"
    short.write_bytes(b"MAP ")
    _raises(open_stack, short, "not an MRC file")


def test_truncated_mrc(tmp_path):
    """An MRC file cut short is reported as truncated with the expected and actual sizes."""
    vol = write_volume(tmp_path / "v.mrc", np.zeros((16, 16, 16), np.float32), 1.0)
    data = vol.read_bytes()
    vol.write_bytes(data[:-1000])
    _raises(read_volume, vol, "truncated MRC file")
    stack = make_stack(tmp_path / "s.mrcs", n=10)
    stack.write_bytes(stack.read_bytes()[:2000])
    _raises(open_stack, stack, "truncated")


def test_odd_and_non_square_boxes(tmp_path):
    """Odd boxes and non-square images are refused with a message saying so."""
    _raw_stack(tmp_path / "odd.mrc", np.zeros((15, 15, 15)))
    _raises(read_volume, tmp_path / "odd.mrc", "box size 15 is odd; cryolens needs an even box")
    _raw_stack(tmp_path / "odd.mrcs", np.zeros((3, 15, 15)))
    _raises(open_stack, tmp_path / "odd.mrcs", "box size 15 is odd")
    _raw_stack(tmp_path / "rect.mrcs", np.zeros((3, 16, 12)))
    _raises(open_stack, tmp_path / "rect.mrcs", "not square")


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_nan_volume(tmp_path):
    """A map with NaN values is refused."""
    vol = np.zeros((8, 8, 8), np.float32)
    vol[5, 1, 1] = np.nan
    write_volume(tmp_path / "nan.mrc", vol, 1.0)
    _raises(read_volume, tmp_path / "nan.mrc", "NaN")


def test_missing_files(tmp_path):
    """Missing volume, stack, STAR, .cs or pickle: 'not found' with the name."""
    _raises(read_volume, tmp_path / "nothere.mrc", "not found")
    _raises(open_stack, tmp_path / "nothere.mrcs", "not found")
    _raises(read_star, tmp_path / "nothere.star", "not found")
    _raises(read_cs, tmp_path / "nothere.cs", "not found")
    stack = make_stack(tmp_path / "p.mrcs", n=3)
    with pytest.raises(InputError, match=r"nothere\.pkl: .*not found"):
        read_cryodrgn(stack, tmp_path / "nothere.pkl")


def test_star_pointing_past_the_stack_end(tmp_path):
    """A STAR row asking for image 12 of a 10-image stack names the STAR file, the row and the stack."""
    make_stack(tmp_path / "p.mrcs", n=10)
    names = [f"{i:06d}@p.mrcs" for i in (1, 2, 12, 3)]
    star = write_star_by_hand(tmp_path / "past.star", {"": {"rlnImageName": names, "rlnMagnification": [1e4] * 4,
                                                            "rlnDetectorPixelSize": [1.5] * 4}})
    _raises(read_star, star, "row 3 refers to image 12 of")
    with pytest.raises(InputError, match=r"p\.mrcs, which has only 10 images"):
        read_star(star)


def test_star_missing_column_and_missing_stack(tmp_path):
    """No rlnImageName column → 'missing column rlnImageName'; a stack that exists nowhere → not
    found, naming the STAR file and the stack."""
    star = write_star_by_hand(tmp_path / "particles.star", {"particles": {"rlnAngleRot": [1.0, 2.0]}})
    _raises(read_star, star, "particles.star: missing column rlnImageName")
    star2 = write_star_by_hand(tmp_path / "gone.star", {"particles": {"rlnImageName": ["000001@gone.mrcs"]}})
    _raises(read_star, star2, "stack gone.mrcs not found")
    bad = tmp_path / "garbage.star"
    bad.write_bytes(b"\x00\x01\x02 not a star file")
    _raises(read_star, bad, "garbage.star")


def test_star_with_odd_stack_or_bad_index(tmp_path):
    """A STAR whose stack has an odd box, or whose image name is not index@path, is refused."""
    _raw_stack(tmp_path / "odd.mrcs", np.zeros((2, 15, 15)))
    star = write_star_by_hand(tmp_path / "odd.star", {"particles": {"rlnImageName": ["000001@odd.mrcs"]}})
    _raises(read_star, star, "odd")
    make_stack(tmp_path / "p.mrcs", n=2)
    star = write_star_by_hand(tmp_path / "idx.star", {"particles": {"rlnImageName": ["one@p.mrcs"]}})
    _raises(read_star, star, "row 1")


def test_cs_problems(tmp_path):
    """A .cs that is not a numpy table, or lacks blob/path, or points past its stack, is refused."""
    (tmp_path / "junk.cs").write_bytes(b"nonsense" * 20)
    _raises(read_cs, tmp_path / "junk.cs", "not a cryoSPARC .cs file")
    cs = np.zeros(2, dtype=[("uid", "<u8"), ("blob/idx", "<u4")])
    with open(tmp_path / "nopath.cs", "wb") as f:
        np.save(f, cs)
    _raises(read_cs, tmp_path / "nopath.cs", "missing field blob/path")
    stack = make_stack(tmp_path / "p.mrcs", n=4)
    p = random_particles(stack, n=4)
    p.image_index[2] = 7
    from cryolens.io.cryosparc import write_cs
    write_cs(tmp_path / "past.cs", p)
    _raises(read_cs, tmp_path / "past.cs", "row 3 refers to image 8")


def test_pickle_shapes_must_match_the_stack(tmp_path):
    """A pose pickle for a different number of images, or a CTF array of the wrong width, is refused."""
    import pickle

    stack = make_stack(tmp_path / "p.mrcs", n=5)
    with open(tmp_path / "poses.pkl", "wb") as f:
        pickle.dump((np.tile(np.eye(3), (4, 1, 1)), np.zeros((4, 2))), f)
    with pytest.raises(InputError, match=r"poses\.pkl: rotations have shape \(4, 3, 3\), expected \(5, 3, 3\)"):
        read_cryodrgn(stack, tmp_path / "poses.pkl")
    with open(tmp_path / "notrot.pkl", "wb") as f:
        pickle.dump((np.tile(np.eye(3) * 2, (5, 1, 1)), np.zeros((5, 2))), f)
    with pytest.raises(InputError, match=r"notrot\.pkl: matrix 0 .*not a rotation"):
        read_cryodrgn(stack, tmp_path / "notrot.pkl")
    with open(tmp_path / "ctf.pkl", "wb") as f:
        pickle.dump(np.zeros((5, 8), np.float32), f)
    with pytest.raises(InputError, match=r"ctf\.pkl: CTF array has shape \(5, 8\)"):
        read_cryodrgn(stack, ctf_pkl=tmp_path / "ctf.pkl")


def test_writer_does_not_touch_its_input(tmp_path):
    """Reading and rewriting a STAR to a new name leaves the original byte-identical."""
    stack = make_stack(tmp_path / "p.mrcs", n=6)
    star = write_star(tmp_path / "in.star", random_particles(stack, n=6))
    before, stack_before = sha(star), sha(stack)
    write_star(tmp_path / "out.star", read_star(star))
    assert sha(star) == before and sha(stack) == stack_before
