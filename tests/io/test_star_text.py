"""The numpy STAR loop reader and writer (io/star_text.py) against the ``starfile`` package (pandas): the same
columns and types on a RELION 3.1 file, quoted values handed to starfile, and the writer's file read back by
starfile."""

import numpy as np
import pandas as pd
import starfile

from cryolens.io.star_text import read_loops, write_loops

TEXT = """# RELION-like file, with comments and blank lines

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnImagePixelSize #3
opticsGroup1 1 1.500000
opticsGroup2 2 1.5


data_particles

loop_
_rlnImageName #1
_rlnAngleRot #2
_rlnOpticsGroup #3
_rlnMicrographName #4
_rlnDefocusU #5
000001@Particles/stack.mrcs   12.5  1  mic_001.mrc 1e4
000002@Particles/stack.mrcs  -3     2  mic_002.mrc nan

"""


def _same(ours: dict, ref: dict) -> None:
    assert list(ours) == list(ref)
    for block, cols in ref.items():
        assert list(ours[block]) == list(cols), block
        for name, ref_col in cols.items():
            col = ours[block][name]
            assert col.dtype.kind == ref_col.dtype.kind, (block, name, col.dtype, ref_col.dtype)
            if col.dtype.kind == "f":
                assert np.array_equal(col, ref_col, equal_nan=True), (block, name)
            else:
                assert list(col) == list(ref_col), (block, name)


def _starfile_loops(path) -> dict:
    blocks = starfile.read(path, always_dict=True)
    return {k: {c: v[c].to_numpy() for c in v.columns} for k, v in blocks.items() if isinstance(v, pd.DataFrame)}


def test_loops_and_types_equal_starfiles(tmp_path):
    """ints, floats (with nan, exponents and a column mixing 12.5 and −3) and strings, in two blocks."""
    path = tmp_path / "p.star"
    path.write_text(TEXT)
    ours = read_loops(path)
    _same(ours, _starfile_loops(path))
    assert ours["particles"]["rlnOpticsGroup"].dtype == np.int64
    assert ours["particles"]["rlnAngleRot"].tolist() == [12.5, -3.0]


def test_quoted_values_are_read_by_starfile(tmp_path):
    path = tmp_path / "q.star"
    path.write_text("data_particles\n\nloop_\n_rlnImageName #1\n_rlnMicrographName #2\n"
                    "1@s.mrcs 'a name with spaces.mrc'\n2@s.mrcs plain.mrc\n")
    ours = read_loops(path)
    assert ours["particles"]["rlnMicrographName"].tolist() == ["a name with spaces.mrc", "plain.mrc"]


def test_written_loops_read_back_by_starfile(tmp_path):
    """The writer's floats (%.6f), integers and strings (one with a space, quoted) come back through starfile."""
    blocks = {"optics": {"rlnOpticsGroup": np.array([1]), "rlnImagePixelSize": np.array([1.25])},
              "particles": {"rlnImageName": ["000001@a.mrcs", "000002@a.mrcs"],
                            "rlnAngleRot": np.array([1.0 / 3, -2.5]), "rlnRandomSubset": np.array([1, 2]),
                            "rlnMicrographName": np.array(["m 1.mrc", "m2.mrc"], dtype=object)}}
    write_loops(tmp_path / "w.star", blocks)
    ref = _starfile_loops(tmp_path / "w.star")
    assert ref["particles"]["rlnAngleRot"].tolist() == [0.333333, -2.5]
    assert ref["particles"]["rlnRandomSubset"].tolist() == [1, 2]
    assert ref["particles"]["rlnMicrographName"].tolist() == ["m 1.mrc", "m2.mrc"]
    assert ref["optics"]["rlnImagePixelSize"].tolist() == [1.25]
    _same(read_loops(tmp_path / "w.star"), ref)
