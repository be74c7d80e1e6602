"""A run folder: config, metrics, maps and plots of one command, all written atomically.

Layout: ``config.json`` (what the run was asked), ``metrics.json`` (the numbers),
``*.mrc`` maps, ``*.png`` plots, ``report.html`` (see :mod:`cryolens.analysis.report`).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .files import atomic_write_text


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):
        return x.tolist()
    return x


class RunFolder:
    """The output folder of one run; ``path(name)`` gives a file inside it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.started = time.time()

    def path(self, name: str) -> Path:
        return self.root / name

    def write_json(self, name: str, data: dict) -> Path:
        p = self.path(name)
        atomic_write_text(p, json.dumps(_jsonable(data), indent=2) + "\n")
        return p

    def write_config(self, command: str, args: dict) -> Path:
        return self.write_json("config.json", {
            "command": command, "arguments": args, "cryolens_version": __version__,
            "python": platform.python_version(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })

    def write_metrics(self, metrics: dict) -> Path:
        return self.write_json("metrics.json", metrics)

    def read_json(self, name: str) -> dict:
        p = self.path(name)
        return json.loads(p.read_text()) if p.exists() else {}
