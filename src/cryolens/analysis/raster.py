"""Small PNG figures drawn with Pillow, for the plots every run folder gets (FSC curves, central sections,
particles): importing matplotlib costs a back-projection command ~0.6 s and drawing three figures with it
~0.5 s more, Pillow ~0.03 s in all.

A :class:`Canvas` is drawn at ``SUPERSAMPLE`` times its size and reduced when saved (smooth lines and text).
Colours are matplotlib's defaults, reproduced as tables (the ``tab10`` cycle; ``gray`` and ``RdBu_r`` as 256-entry
lookup tables indexed as matplotlib indexes them), so the pictures look as they did. Text uses matplotlib's
DejaVu Sans file when it is installed (found without importing matplotlib), else Pillow's default font.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..io.files import atomic_path

SUPERSAMPLE = 3
TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
         "#17becf")
# ColorBrewer's 11-class RdBu (red → blue), the nodes matplotlib's "RdBu" interpolates linearly
_RDBU = ((103, 0, 31), (178, 24, 43), (214, 96, 77), (244, 165, 130), (253, 219, 199), (247, 247, 247),
         (209, 229, 240), (146, 197, 222), (67, 147, 195), (33, 102, 172), (5, 48, 97))
_NODES = {"gray": ((0, 0, 0), (255, 255, 255)), "RdBu": _RDBU, "RdBu_r": _RDBU[::-1]}


@functools.lru_cache(maxsize=4)
def _lut(name: str) -> np.ndarray:
    nodes = np.asarray(_NODES[name], dtype=np.float64) / 255
    x = np.linspace(0, 1, 256)
    at = np.linspace(0, 1, len(nodes))
    return np.stack([np.interp(x, at, nodes[:, c]) for c in range(3)], -1)


def colormap(name: str, values: np.ndarray) -> np.ndarray:
    """``values`` in ``[0, 1]`` (clipped) → ``(..., 3)`` RGB in ``[0, 1]`` of colormap ``name`` (``gray``, ``RdBu``,
    ``RdBu_r``), as matplotlib's ``colormaps[name](values)[..., :3]``: entry ``⌊256·v⌋`` of a 256-entry table."""
    idx = np.clip((np.clip(values, 0.0, 1.0) * 256).astype(np.int64), 0, 255)
    return _lut(name)[idx]


@functools.lru_cache(maxsize=16)
def font(size: float) -> ImageFont.ImageFont:
    """DejaVu Sans (matplotlib's file) ``size`` pixels high."""
    px = max(1, round(size))
    spec = importlib.util.find_spec("matplotlib")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), px)
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


class Canvas:
    """A white ``width × height`` figure (output pixels, origin top left) drawn at ``supersample`` × resolution."""

    def __init__(self, width: int, height: int, supersample: int = SUPERSAMPLE):
        self.width, self.height, self.k = width, height, supersample
        self.image = Image.new("RGB", (width * supersample, height * supersample), "white")
        self.draw = ImageDraw.Draw(self.image)

    def _s(self, v: float) -> float:
        return v * self.k

    def line(self, points: list[tuple[float, float]], color: str = "black", width: float = 1.0,
             dashed: bool = False) -> None:
        """A polyline through ``points`` (output pixels); ``dashed``: 4-px dashes, 3-px gaps along each segment."""
        pts = [(self._s(x), self._s(y)) for x, y in points]
        w = max(1, round(self._s(width)))
        if not dashed:
            self.draw.line(pts, fill=color, width=w, joint="curve")
            return
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            n = math.hypot(x1 - x0, y1 - y0)
            dash, step = self._s(4), self._s(7)
            for a in np.arange(0, n, step):
                b = min(a + dash, n)
                self.draw.line([(x0 + (x1 - x0) * a / n, y0 + (y1 - y0) * a / n),
                                (x0 + (x1 - x0) * b / n, y0 + (y1 - y0) * b / n)], fill=color, width=w)

    def rect(self, box: tuple[float, float, float, float], outline: str = "black", width: float = 1.0,
             fill: str | None = None) -> None:
        self.draw.rectangle([self._s(v) for v in box], outline=outline, width=max(1, round(self._s(width))),
                            fill=fill)

    def text(self, xy: tuple[float, float], s: str, size: float = 9, anchor: str = "la", color: str = "black",
             angle: float = 0) -> None:
        """Text at ``xy`` with Pillow's ``anchor`` (e.g. ``"mm"`` centred, ``"rm"`` right-middle); ``angle`` in
        degrees counter-clockwise (90: a y-axis label)."""
        f = font(size * self.k)
        if angle == 0:
            self.draw.text((self._s(xy[0]), self._s(xy[1])), s, fill=color, font=f, anchor=anchor)
            return
        box = self.draw.textbbox((0, 0), s, font=f, anchor="lt")
        tile = Image.new("RGBA", (box[2] + 2, box[3] + 2), (255, 255, 255, 0))
        ImageDraw.Draw(tile).text((1, 1), s, fill=color, font=f, anchor="lt")
        tile = tile.rotate(angle, expand=True)
        x, y = self._s(xy[0]) - tile.width / 2, self._s(xy[1]) - tile.height / 2
        self.image.paste(tile, (round(x), round(y)), tile)

    def picture(self, rgb: np.ndarray, box: tuple[float, float, float, float]) -> None:
        """An ``(H, W, 3)`` RGB array in ``[0, 1]`` (row 0 on top) into ``box = (x0, y0, x1, y1)``, each array pixel
        a block (nearest neighbour, as matplotlib's ``imshow`` enlarges)."""
        tile = Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), "RGB")
        x0, y0, x1, y1 = (round(self._s(v)) for v in box)
        self.image.paste(tile.resize((x1 - x0, y1 - y0), Image.NEAREST), (x0, y0))

    def save(self, path: str | os.PathLike) -> Path:
        """Reduce to the output size (Lanczos) and write the PNG atomically (fast zlib level: noisy pictures such as
        particles compress little at any level)."""
        path = Path(path)
        out = self.image if self.k == 1 else self.image.resize((self.width, self.height), Image.LANCZOS)
        with atomic_path(path) as tmp:
            out.save(tmp, format="PNG", compress_level=1)
        return path


def nice_ticks(lo: float, hi: float, count: int = 6) -> np.ndarray:
    """About ``count`` round tick values (steps of 1, 2 or 5 × 10ⁿ) inside ``[lo, hi]``."""
    span = max(hi - lo, 1e-12)
    raw = span / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return np.arange(first, hi + step * 1e-9, step)
