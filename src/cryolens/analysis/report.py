"""The per-run HTML report: config, metrics, training curves and every PNG of the run folder, in
one self-contained file (images embedded as data URIs) that opens offline in any browser.

Sources in the run folder: ``config.json``, ``metrics.json``, ``result.json`` (benchmark status, if
any), ``error.txt`` (if the run failed), ``log.jsonl`` (one JSON record per training step: plotted
as ``training_curves.png`` unless that exists), ``*.png`` and ``*.gif`` (animations, e.g. latent traversals).
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

from ..io.files import atomic_write_text


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(d: dict) -> str:
    rows = []
    for k, v in d.items():
        if isinstance(v, (list, dict)) and len(json.dumps(v)) > 200:
            v = json.dumps(v)[:200] + " …"
        rows.append(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def read_log(path: str | os.PathLike) -> list[dict]:
    """Records of a ``log.jsonl`` (bad lines skipped; a missing file gives ``[]``)."""
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _training_curves(run: Path) -> None:
    if (run / "training_curves.png").exists() or not (run / "log.jsonl").is_file():
        return
    from .curves import plot_log_curves

    plot_log_curves(read_log(run / "log.jsonl"), run / "training_curves.png")


def write_report(run_dir: str | os.PathLike, title: str, captions: dict[str, str] | None = None) -> Path:
    """Write ``report.html`` in ``run_dir`` from the files listed in the module docstring."""
    run = Path(run_dir)
    _training_curves(run)
    config = _read_json(run / "config.json")
    metrics = _read_json(run / "metrics.json")
    result = _read_json(run / "result.json")
    captions = {"training_curves.png": "training curves (log.jsonl)", **(captions or {})}
    figs = []
    for img in sorted([*run.glob("*.png"), *run.glob("*.gif")]):
        data = base64.b64encode(img.read_bytes()).decode()
        cap = html.escape(captions.get(img.name, img.stem.replace("_", " ")))
        mime = "image/gif" if img.suffix == ".gif" else "image/png"
        figs.append(f'<figure><img alt="{html.escape(img.name)}" src="data:{mime};base64,{data}">'
                    f"<figcaption>{cap} <code>{html.escape(img.name)}</code></figcaption></figure>")
    files = "".join(f"<li><code>{html.escape(p.name)}</code></li>" for p in sorted(run.iterdir())
                    if p.is_file() and p.name != "report.html" and not p.name.startswith("."))
    flat_metrics = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
    nested = {k: v for k, v in metrics.items() if isinstance(v, (list, dict))}
    status = ""
    if result:
        status = "<h2>Status</h2>" + _table({k: v for k, v in result.items()
                                               if k in ("status", "error", "wall_s", "peak_mem_mb", "budget_s",
                                                        "memory_mb", "task", "method", "origin")})
    error = ""
    if (run / "error.txt").is_file():
        error = f"<h2>Error</h2><pre>{html.escape((run / 'error.txt').read_text()[-4000:])}</pre>"
    args = config.get("arguments", {})
    details = "".join(f"<details><summary>{html.escape(k)}</summary><pre>{html.escape(json.dumps(v, indent=1)[:20000])}"
                      "</pre></details>" for k, v in nested.items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 0.9em; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
img {{ max-width: 520px; border: 1px solid #ddd; }}
figcaption {{ font-size: 0.85em; color: #555; }}
pre {{ font-size: 0.8em; background: #f6f6f6; padding: 0.5em; overflow-x: auto; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{status}{error}
<h2>Metrics</h2>{_table(flat_metrics) if flat_metrics else '<p>no metrics</p>'}
{('<h3>Curves and tables</h3>' + details) if details else ''}
<h2>Plots</h2>{''.join(figs) or '<p>no plots</p>'}
<h2>Configuration</h2>{_table({k: v for k, v in args.items() if not isinstance(v, dict)})}
{''.join(f'<details><summary>{html.escape(k)}</summary><pre>{html.escape(json.dumps(v, indent=1))}</pre></details>'
         for k, v in args.items() if isinstance(v, dict))}
<p>command: <code>{html.escape(str(config.get('command', '')))}</code>,
cryolens {html.escape(str(config.get('cryolens_version', '')))}</p>
<h2>Files</h2><ul>{files}</ul>
</body></html>
"""
    out = run / "report.html"
    atomic_write_text(out, page)
    return out
