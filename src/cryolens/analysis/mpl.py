"""matplotlib, headless (Agg), for the plots that need more than :mod:`cryolens.analysis.raster` draws (histograms,
training curves, per-iteration and latent plots): imported only by the modules that draw them."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..io.files import atomic_path  # noqa: E402

__all__ = ["plt", "_save"]


def _save(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG atomically (110 dpi, tight bounding box) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path
