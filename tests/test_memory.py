"""cryolens.memory: after a larger tensor has raised glibc's dynamic mmap threshold, a freed 8 MiB
tensor stays on the heap under small live objects; release_free_heap hands it back (each case in a
fresh interpreter: the heap state is process-wide)."""

import json
import subprocess
import sys

import pytest

CHILD = r"""
import json, sys
import torch
from cryolens.memory import release_free_heap

def anon_kb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

big = torch.empty(24 << 20, dtype=torch.uint8); big.fill_(1); del big  # raises the dynamic threshold to 24 MiB
t = torch.empty(8 << 20, dtype=torch.uint8); t.fill_(1)
pins = [torch.empty(256, dtype=torch.uint8) for _ in range(64)]  # small objects above it on the heap
before = anon_kb(); del t
ok = release_free_heap() if sys.argv[1] == "trim" else None
after = anon_kb()
print(json.dumps({"ok": ok, "released_kb": before - after}))
"""


def _run(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_release_free_heap_returns_a_freed_8_mib_tensor_to_the_system():
    trimmed = _run("trim")
    assert trimmed["ok"] is True
    assert trimmed["released_kb"] >= 7 * 1024
    default = _run("default")  # glibc keeps it on the heap
    assert default["released_kb"] < 1024
