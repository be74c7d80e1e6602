"""The loops of a STAR file read and written with numpy alone (pandas and the ``starfile`` package, which the
readers used before, cost a short command ~0.5 s and ~50 MB to import).

A block's loop becomes a ``{label: column}`` dict in file order (labels without the leading ``_``): int64 where
every value is an integer, float64 where every value is a number, else an object array of strings — the types
``starfile`` gave. Blocks without a loop (key–value pairs) are skipped, as the readers never used them. A file
this reader does not take (quoted values, a row whose length differs from its header) is handed to ``starfile``,
imported only then, so that any file read before still reads.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

Loop = dict[str, np.ndarray]


class _NotPlain(ValueError):
    """The file needs the full STAR grammar (``starfile``)."""


def _column(values: tuple[str, ...]) -> np.ndarray:
    for dtype in (np.int64, np.float64):
        try:
            return np.array(values, dtype=dtype)
        except (ValueError, OverflowError):
            continue
    return np.array(values, dtype=object)


def _parse(text: str) -> dict[str, Loop]:
    blocks: dict[str, Loop] = {}
    lines = text.splitlines()
    block, i, n = None, 0, len(lines)
    while i < n:
        s = lines[i].strip()
        i += 1
        if s.startswith("data_"):
            block = s[5:]
        elif s.startswith("loop_"):
            if block is None:
                raise _NotPlain("a loop before any data_ block")
            names: list[str] = []
            while i < n and lines[i].lstrip().startswith("_"):
                names.append(lines[i].split()[0][1:])
                i += 1
            rows: list[list[str]] = []
            while i < n:
                s = lines[i].strip()
                if s.startswith(("data_", "loop_", "_")):
                    break
                i += 1
                if s and not s.startswith("#"):
                    rows.append(s.split())
            if not names or any(len(r) != len(names) for r in rows):
                raise _NotPlain("a row whose length differs from its header")
            cols = list(zip(*rows)) if rows else [()] * len(names)
            blocks[block] = {name: _column(c) for name, c in zip(names, cols)}
    return blocks


def _from_starfile(path: Path) -> dict[str, Loop]:
    import pandas as pd
    import starfile

    blocks = starfile.read(path, always_dict=True) or {}
    return {k: {c: v[c].to_numpy() for c in v.columns} for k, v in blocks.items() if isinstance(v, pd.DataFrame)}


def read_loops(path: str | os.PathLike) -> dict[str, Loop]:
    """``{block name: {label: column}}`` of every loop of the STAR file at ``path`` (block ``data_optics`` →
    ``"optics"``, ``data_`` → ``""``). Raises what ``starfile`` raises for a file neither reader takes."""
    path = Path(path)
    text = path.read_text()
    if '"' in text or "'" in text:  # quoted values: the full grammar
        return _from_starfile(path)
    try:
        return _parse(text)
    except _NotPlain:
        return _from_starfile(path)


def _format(col) -> list[str]:
    a = np.asarray(col)
    if a.dtype.kind == "f":
        return [f"{v:.6f}" for v in a.tolist()]
    if a.dtype.kind in "iub":
        return [str(int(v)) for v in a.tolist()]
    out = [str(v) for v in a.tolist()]
    return [f'"{v}"' if not v or any(c.isspace() for c in v) else v for v in out]


def write_loops(path: str | os.PathLike, blocks: dict[str, dict[str, object]]) -> None:
    """Write ``{block name: {label: column}}`` (columns of equal length: floats as ``%.6f``, integers, strings —
    quoted when empty or holding white space) as STAR loops, the layout ``starfile`` wrote."""
    parts = ["# Created by cryolens\n"]
    for name, cols in blocks.items():
        parts.append(f"\n\ndata_{name}\n\nloop_\n")
        parts.extend(f"_{label} #{k + 1}\n" for k, label in enumerate(cols))
        parts.extend("\t".join(row) + "\n" for row in zip(*(_format(c) for c in cols.values())))
    Path(path).write_text("".join(parts))
