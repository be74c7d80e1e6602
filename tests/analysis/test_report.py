"""report.html: self-contained (images as data URIs), training curves drawn from log.jsonl, and —
in a real headless browser — every embedded plot decodes to an image of non-zero size (a corrupt
image, by contrast, decodes to width 0, so the probe can fail)."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from cryolens.analysis.plots import plot_fsc
from cryolens.analysis.report import write_report
from cryolens.io.runfolder import RunFolder


def _run_folder(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.write_config("test", {"n": 3, "nested": {"a": 1}})
    run.write_metrics({"resolution_A": 7.5, "curve": [1.0, 0.5, 0.1]})
    plot_fsc({"test": np.linspace(1, 0, 9)}, 1.5, 16, run.path("fsc.png"))
    with open(run.path("log.jsonl"), "w") as fh:
        for step in range(20):
            fh.write(json.dumps({"step": step, "loss": 1.0 / (step + 1), "kl": 0.1 * step}) + "\n")
    return run


def test_report_embeds_plots_and_training_curves(tmp_path):
    """report.html holds one data-URI <img> per PNG (fsc.png and the training_curves.png made from
    log.jsonl), the scalar metrics, the nested ones in <details>, and no external references."""
    run = _run_folder(tmp_path)
    page = write_report(run.root, "test run").read_text()
    assert (run.root / "training_curves.png").is_file()
    imgs = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    assert sorted(imgs) == ["fsc.png", "training_curves.png"]
    assert "resolution_A" in page and "<summary>curve</summary>" in page
    assert not re.search(r'src="(?!data:)', page) and "http" not in page.split("<body>")[1].split("command:")[0]


def _browser_widths(html_path, tmp_path):
    probe = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load', () => { document.title = 'W=' + "
              "JSON.stringify(Array.from(document.images).map(i => i.naturalWidth)); });</script>")
    probe.write_text(html_path.read_text().replace("</body>", script + "</body>"))
    out = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r"<title>W=(\[[^<]*\])</title>", out.stdout)
    assert m, f"no probe result in chromium's DOM: {out.stdout[:300]} {out.stderr[-300:]}"
    return json.loads(m.group(1))


@pytest.mark.browser
def test_report_renders_its_images_in_headless_chromium(tmp_path):
    """Opened in headless chromium, each of the report's images has naturalWidth > 0 (the PNGs
    decode); a page with a corrupt PNG gives 0 for it."""
    run = _run_folder(tmp_path)
    report = write_report(run.root, "test run")
    widths = _browser_widths(report, tmp_path)
    assert len(widths) == 2 and all(w > 100 for w in widths)
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><title>x</title></head><body>'
                   '<img src="data:image/png;base64,iVBORw0KGgoAAAAAAAAA"></body></html>')
    assert _browser_widths(bad, tmp_path) == [0]
    assert shutil.which("chromium")
