"""cryolens.memory: with the heap bound, a freed multi-MB tensor goes back to the system even after a
larger one has raised glibc's dynamic mmap threshold (each case in a fresh interpreter: the setting
is process-wide)."""

import json
import subprocess
import sys

import pytest

CHILD = r"""
import json, sys
import torch
from cryolens.memory import bound_heap_growth

def anon_kb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

ok = bound_heap_growth() if sys.argv[1] == "bound" else None
big = torch.empty(24 << 20, dtype=torch.uint8); big.fill_(1); del big  # raises the dynamic threshold to 24 MiB
t = torch.empty(8 << 20, dtype=torch.uint8); t.fill_(1)
pins = [torch.empty(256, dtype=torch.uint8) for _ in range(64)]  # small objects above it on the heap
before = anon_kb(); del t; after = anon_kb()
print(json.dumps({"ok": ok, "released_kb": before - after}))
"""


def _run(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_bounded_heap_returns_a_freed_8_mib_tensor_to_the_system():
    bound = _run("bound")
    assert bound["ok"] is True
    assert bound["released_kb"] >= 7 * 1024
    default = _run("default")  # glibc's dynamic threshold keeps it on the heap
    assert default["released_kb"] < 1024
