"""The per-run HTML report: config, metrics and every PNG of the run folder, in one
self-contained file (images embedded) that opens offline in any browser."""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

from ..io.files import atomic_write_text


def _table(d: dict) -> str:
    rows = []
    for k, v in d.items():
        if isinstance(v, (list, dict)) and len(json.dumps(v)) > 200:
            v = json.dumps(v)[:200] + " …"
        rows.append(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def write_report(run_dir: str | os.PathLike, title: str, captions: dict[str, str] | None = None) -> Path:
    """Write ``report.html`` in ``run_dir`` from its ``config.json``, ``metrics.json`` and ``*.png``."""
    run = Path(run_dir)
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    captions = captions or {}
    figs = []
    for png in sorted(run.glob("*.png")):
        data = base64.b64encode(png.read_bytes()).decode()
        cap = html.escape(captions.get(png.name, png.stem.replace("_", " ")))
        figs.append(f'<figure><img alt="{html.escape(png.name)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{cap} <code>{html.escape(png.name)}</code></figcaption></figure>")
    files = "".join(f"<li><code>{html.escape(p.name)}</code></li>" for p in sorted(run.iterdir())
                    if p.is_file() and p.name != "report.html" and not p.name.startswith("."))
    flat_metrics = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 0.9em; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
img {{ max-width: 520px; border: 1px solid #ddd; }}
figcaption {{ font-size: 0.85em; color: #555; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Metrics</h2>{_table(flat_metrics)}
<h2>Plots</h2>{''.join(figs) or '<p>no plots</p>'}
<h2>Configuration</h2>{_table(config.get('arguments', {}))}
<p>command: <code>{html.escape(str(config.get('command', '')))}</code>,
cryolens {html.escape(str(config.get('cryolens_version', '')))}</p>
<h2>Files</h2><ul>{files}</ul>
</body></html>
"""
    out = run / "report.html"
    atomic_write_text(out, page)
    return out
