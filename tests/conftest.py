import os

import pytest
import torch


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


def require_program(name: str) -> str:
    """Path of an outside program, or skip — unless CRYOLENS_REQUIRE_RELION=1 (CI), then fail."""
    import shutil

    path = shutil.which(name)
    if path is None:
        msg = f"{name} not found (install Debian's relion: apt-get install -y --no-install-recommends relion)"
        if os.environ.get("CRYOLENS_REQUIRE_RELION") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path
