"""The Pillow plots (analysis/raster.py, analysis/plots.py): colours equal to matplotlib's colormaps, round ticks,
and an FSC curve drawn where its values put it."""

import matplotlib
import numpy as np
from PIL import Image

from cryolens.analysis.plots import plot_fsc
from cryolens.analysis.raster import TAB10, colormap, nice_ticks


def test_colormaps_equal_matplotlibs():
    """gray, RdBu and RdBu_r tables give matplotlib's colours at 2,001 values in [0, 1] (both ends included)."""
    x = np.linspace(0, 1, 2001)
    for name in ("gray", "RdBu", "RdBu_r"):
        assert np.allclose(colormap(name, x), matplotlib.colormaps[name](x)[..., :3], atol=1e-12), name


def test_nice_ticks_are_round_and_inside():
    assert np.allclose(nice_ticks(-0.1, 1.05, 7), [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert np.allclose(nice_ticks(0, 0.35), [0, 0.1, 0.2, 0.3])
    assert np.allclose(nice_ticks(0, 0.35, 8), [0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35])
    assert np.allclose(nice_ticks(0, 7), [0, 2, 4, 6])


def test_fsc_curve_is_drawn_where_its_values_are(tmp_path):
    """A curve falling linearly from 1 to 0 over 0 … 0.5 Å⁻¹ (D 32, 1 Å/px), FSC = 1 − 2k: its colour is in the
    plot at the height of 1 − 2k at k = 0.04 and k = 0.46 (axes: y −0.1 … 1.05 over rows 84 … 410, x with 5 %
    margins over columns 64 … 640), and not at the other end's height."""
    path = plot_fsc({"ramp": np.linspace(1, 0, 17)}, 1.0, 32, tmp_path / "fsc.png", thresholds={})
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert img.shape == (470, 660, 3)
    blue = np.array([int(TAB10[0][i:i + 2], 16) for i in (1, 3, 5)])
    near = np.abs(img - blue).sum(-1) < 60
    row = lambda f: round(410 - (f + 0.1) / 1.15 * 326)  # noqa: E731
    col = lambda k: round(64 + (k + 0.025) / 0.55 * 576)  # noqa: E731
    hi, lo = row(1 - 2 * 0.04), row(1 - 2 * 0.46)
    assert near[hi - 2:hi + 3, col(0.04)].any() and near[lo - 2:lo + 3, col(0.46)].any()
    assert not near[lo - 2:lo + 3, col(0.04)].any() and not near[hi - 2:hi + 3, col(0.46)].any()
