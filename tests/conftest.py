"""Shared fixtures: the device parametrisation, seeding, and the one gate for RELION tests.

A test marked ``@pytest.mark.relion`` is skipped, with the reason, when a RELION program is
missing — unless ``CRYOLENS_REQUIRE_RELION=1`` (CI), where a missing program fails it.
"""

import os

import pytest
import torch

from cryolens.bench.relion import INSTALL_HINT, missing_programs


def _devices():
    devs = ["cpu"]
    if torch.cuda.is_available():
        devs.append("cuda")
    return devs


@pytest.fixture(params=_devices())
def device(request):
    """Every compute test runs on the CPU, and on CUDA when a GPU is present."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)



@pytest.fixture(autouse=True)
def _require_relion(request):
    """Skip (or, with CRYOLENS_REQUIRE_RELION=1, fail) a relion-marked test when RELION is missing."""
    if request.node.get_closest_marker("relion") is None:
        return
    missing = missing_programs()
    if missing:
        msg = f"RELION programs not found: {', '.join(missing)} ({INSTALL_HINT})"
        if os.environ.get("CRYOLENS_REQUIRE_RELION") == "1":
            pytest.fail(msg + "; CRYOLENS_REQUIRE_RELION=1 makes this a failure")
        pytest.skip(msg)


@pytest.fixture(autouse=True)
def _require_browser(request):
    """Skip (or, with CRYOLENS_REQUIRE_BROWSER=1 or CI's CRYOLENS_REQUIRE_RELION=1, fail) a
    browser-marked test when headless chromium is missing."""
    if request.node.get_closest_marker("browser") is None:
        return
    import shutil

    if shutil.which("chromium") is None:
        msg = "chromium not found (apt-get install -y --no-install-recommends chromium)"
        if "1" in (os.environ.get("CRYOLENS_REQUIRE_BROWSER"), os.environ.get("CRYOLENS_REQUIRE_RELION")):
            pytest.fail(msg + "; CRYOLENS_REQUIRE_BROWSER / CRYOLENS_REQUIRE_RELION make this a failure")
        pytest.skip(msg)


@pytest.fixture
def cryodrgn_exe():
    """The ``cryodrgn`` program of cryoDRGN 4.3.1's own venv (``CRYOLENS_CRYODRGN`` or PATH). Skipped
    with the reason when missing, failed under ``CRYOLENS_REQUIRE_CRYODRGN=1`` (CI installs it)."""
    from cryolens.bench.cryodrgn import CryoDRGNNotFound, cryodrgn_program

    try:
        return cryodrgn_program()
    except CryoDRGNNotFound as e:
        if os.environ.get("CRYOLENS_REQUIRE_CRYODRGN") == "1":
            pytest.fail(f"{e}; CRYOLENS_REQUIRE_CRYODRGN=1 makes this a failure")
        pytest.skip(str(e))
