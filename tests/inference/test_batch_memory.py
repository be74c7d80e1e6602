"""Batch and chunk sizes from free memory (inference/memory.py): the working-set models against a hand
count, a short memory giving small batches (never below 1), the user's value winning, the GPU branch
uncapped, and the automatic choice giving the map of the same fixed batch (bit for bit) — on every device."""

import torch

from cryolens.imaging.forward import render_images
from cryolens.imaging.rotations import random_rotations
from cryolens.imaging.so3_grid import so3_grid
from cryolens.inference import memory as M
from cryolens.inference.em import em_iteration
from cryolens.inference.posterior import translation_grid

from _inference_data import blob_volume

D = 16


def test_working_set_models_match_a_hand_count():
    """Bytes per image, rotation and pair as the module docstring counts them, done by hand; and the
    largest count that fits a quarter of the free memory."""
    # image: 8 + 4 reals per pixel (16² = 256) and shift + 3 per pose, 4-byte reals: 4 · (12·256 + 300);
    # with 9 shifts: 4 · ((8 + 36)·256 + 300)
    assert M.image_bytes(16, 100, 4) == 13488
    assert M.image_bytes(16, 100, 4, n_shifts=9) == 4 * (44 * 256 + 300)
    # rotation of a chunk of 10 images × 9 shifts: 4 per pixel + 3 per (image, shift), 8-byte reals
    assert M.rotation_bytes(16, 10, 9, 8) == 8 * (1024 + 270)
    assert M.pair_bytes(16, 4) == 6144  # 6 reals per pixel
    # 0.25 · 40 000 B = 10 000 B: 10 items of 1000 B; 8 when 2000 B are taken by fixed buffers
    assert M.fit_count("cpu", 1000, free=40_000) == 10
    assert M.fit_count("cpu", 1000, fixed=2000, free=40_000) == 8
    assert M.fit_count("cpu", 1000, free=40_000, fraction=0.5) == 20


def test_short_memory_gives_a_small_batch_never_below_one(monkeypatch):
    """With room for 10 images the batch is 10; with less than one image's working set it is 1; with
    plenty it is the CPU's cap (64, today's fixed size). On a GPU (free memory given) nothing caps it."""
    per = M.image_bytes(D, 500)
    monkeypatch.setattr(M, "free_memory_bytes", lambda device=None: int(4 * 10.5 * per))
    assert M.batch_size_for("cpu", D, 500) == 10
    monkeypatch.setattr(M, "free_memory_bytes", lambda device=None: 100)
    assert M.batch_size_for("cpu", D, 500) == 1
    assert M.pair_chunk_for("cpu", D) == 1
    assert M.rotation_chunk_for("cpu", D, 64, 9, cap=300) == 1
    monkeypatch.setattr(M, "free_memory_bytes", lambda device=None: 1 << 40)
    assert M.batch_size_for("cpu", D, 500) == 64
    assert M.rotation_chunk_for("cpu", D, 64, 9, cap=300) == 300
    gpu = torch.device("cuda")  # only the arithmetic of the GPU branch: the free bytes are given
    assert M.fit_count(gpu, per, cap=64, free=4 * 1000 * per) == 1000
    assert M.fit_count(gpu, per, cap=64, free=4 * 1000 * per, gpu_cap=300) == 300


def test_the_users_value_wins(monkeypatch):
    monkeypatch.setattr(M, "free_memory_bytes", lambda device=None: 100)
    assert M.batch_size_for("cpu", D, 500, given=7) == 7
    assert M.em_sizes("cpu", D, 500, 9, torch.float32, batch_size=5, pair_chunk=9) == (5, 9)
    assert M.rotation_chunk_for("cpu", D, 64, 9, cap=300, given=33) == 33


def test_free_memory_is_read():
    """The CPU's free memory is MemAvailable of /proc/meminfo (present on the Linux CI)."""
    free = M.free_memory_bytes("cpu")
    kb = next(int(line.split()[1]) for line in M.MEMINFO.read_text().splitlines() if line.startswith("MemAvailable"))
    assert free is not None and abs(free - kb * 1024) < 2 ** 30  # read a moment apart


def test_automatic_batch_gives_the_map_of_that_fixed_batch(monkeypatch, device):
    """em_iteration with the sizes left automatic equals, bit for bit, the run with the sizes it chose given
    by hand: 64 images (the CPU cap) with plenty of memory, 10 when memory is short — and the two batch
    sizes agree to rounding."""
    g = torch.Generator().manual_seed(2)
    vol = blob_volume(D, dtype=torch.float32)
    img = render_images(vol, random_rotations(70, generator=g), torch.zeros(70, 2))
    img = img + 0.5 * torch.randn(img.shape, generator=g)
    sigma2 = torch.full((D // 2 + 1,), 0.25 * D * D)
    rots, shifts = so3_grid(0, device=device), translation_grid(1.0, 1.0, device=device)
    start = vol.to(device)

    def run(**kw):
        return em_iteration(img, start, sigma2, rots, shifts, device=device, **kw)

    def close(a, b):  # equal to rounding: other batches sum in another order
        return torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))

    # bit for bit on the CPU; a GPU's scatter-adds are not deterministic, so there only to rounding
    same = torch.equal if device.type == "cpu" else close
    if device.type == "cpu":  # plenty of memory: the CPU's cap, today's fixed sizes
        assert torch.equal(run().volume, run(batch_size=64, pair_chunk=2048).volume)
    per = M.image_bytes(D, rots.shape[0] * shifts.shape[0], n_shifts=shifts.shape[0])
    monkeypatch.setattr(M, "free_memory_bytes", lambda device=None: int(4 * 10.5 * per))
    auto, ten = run(pair_chunk=2048), run(batch_size=10, pair_chunk=2048)
    assert same(auto.volume, ten.volume)
    assert torch.equal(auto.map_rotation_index, ten.map_rotation_index)
    fixed = run(batch_size=64, pair_chunk=2048)
    assert close(auto.volume, fixed.volume) and not torch.equal(auto.volume, fixed.volume)
    assert torch.equal(auto.map_rotation_index, fixed.map_rotation_index)
