"""`cryolens train 3dflex` end to end on a tiny two-state set (one blob of a four-blob map sits 8 px to
the left or to the right): the run folder holds the canonical, half, consensus and local-resolution maps
and the latents; the training loss falls; the first principal component of the latents separates the two
states (a threshold on it labels them, against 50 % by chance); `eval-vol` decodes a state-0 and a
state-1 image's z to maps each closer to its own state's map."""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from cryolens.cli.main import main
from cryolens.imaging import CTFParams, random_rotations, render_images
from cryolens.io.mrc import read_volume, write_stack
from cryolens.io.particles import Particles
from cryolens.io.star import write_star

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "methods"))
from _drgn_data import PX, blob_volume  # noqa: E402


def two_state_star(tmp_path, n: int = 96, d: int = 16, noise: float = 0.02) -> tuple[Path, np.ndarray]:
    g = torch.Generator().manual_seed(5)
    rots = random_rotations(n, generator=g)
    shifts = (torch.rand(n, 2, generator=g) - 0.5) * 2
    du = 8000 + 8000 * torch.rand(n, generator=g)
    ctf = CTFParams.create(du, du - 300, torch.rand(n, generator=g) * 3, 300, 2.7, 0.1)
    state = np.arange(n) % 2
    images = torch.empty(n, d, d)
    for s in (0, 1):
        m = torch.as_tensor(state == s)
        images[m] = render_images(blob_volume(d, -1.0 if s == 0 else 1.0), rots[m], shifts[m], ctf[m], PX)
    images += noise * torch.randn(images.shape, generator=g)
    write_stack(tmp_path / "stack.mrcs", images.numpy(), PX)
    star = tmp_path / "particles.star"
    write_star(star, Particles(PX, d, [str(tmp_path / "stack.mrcs")], np.zeros(n, int), np.arange(n), rots, shifts,
                               ctf))
    return star, state


def test_train_3dflex_separates_two_states(tmp_path):
    star, state = two_state_star(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "3dflex", str(star), "--out", str(run), "--epochs", "8", "--batch-size", "16", "--lr", "3e-3",
                 "--set", "mesh_cells=4", "--set", "lbfgs_iterations=3", "--set", "norm_images=50",
                 "--quiet", "--no-report", "--device", "cpu"]) == 0
    for name in ("map.mrc", "consensus.mrc", "local_resolution.mrc", "z.npy", "metrics.json", "log.jsonl"):
        assert (run / name).is_file(), name
    local, px = read_volume(run / "local_resolution.mrc")
    assert local.shape == (16, 16, 16) and px == PX and np.all(local >= 2 * PX - 1e-6)
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["resolution_halfmap_0143_A"])
    steps = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if "epoch_end" not in x]
    first = np.mean([s["mse"] for s in steps if s["epoch"] == 1])
    last = np.mean([s["mse"] for s in steps if s["epoch"] == 8])
    assert last < 0.9 * first, (first, last)
    z = np.load(run / "z.npy")
    pc1 = (z - z.mean(0)) @ np.linalg.svd(z - z.mean(0), full_matrices=False)[2][0]
    split = pc1 > np.median(pc1)
    accuracy = max(np.mean(split == state), np.mean(split != state))
    assert accuracy >= 0.85, accuracy
    # eval-vol decodes the run: the map at a state-0 image's z is closer to state 0's map, and vice versa
    a, b = int(np.nonzero(state == 0)[0][0]), int(np.nonzero(state == 1)[0][0])
    assert main(["eval-vol", str(run), "--z-index", str(a), str(b), "--out", str(tmp_path / "maps"),
                 "--device", "cpu"]) == 0
    truth = [blob_volume(16, -1.0).numpy(), blob_volume(16, 1.0).numpy()]
    for k, name in enumerate(("vol_000.mrc", "vol_001.mrc")):
        v, _ = read_volume(tmp_path / "maps" / name)
        err = [np.linalg.norm(v / np.linalg.norm(v) - t / np.linalg.norm(t)) for t in truth]
        assert err[k] < err[1 - k], (name, err)


def test_train_3dflex_on_a_cropped_box_decodes_at_the_full_box(tmp_path):
    """``train_box``: the flow trains on 8 px images; the maps, the saved model and ``eval-vol`` are at 16 px,
    and the decoded maps follow the learnt flows (the two states' maps differ)."""
    star, state = two_state_star(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "3dflex", str(star), "--out", str(run), "--epochs", "2", "--batch-size", "16",
                 "--set", "mesh_cells=4", "--set", "lbfgs_iterations=1", "--set", "train_box=8",
                 "--set", "norm_images=50", "--quiet", "--no-report", "--device", "cpu"]) == 0
    assert (run / "flex_model.pt").is_file() and not list(run.glob("train_particles*"))
    assert read_volume(run / "map.mrc")[0].shape == (16, 16, 16)
    assert main(["eval-vol", str(run), "--z-index", "0", "1", "--out", str(tmp_path / "maps"), "--device", "cpu"]) == 0
    maps = [read_volume(tmp_path / "maps" / f"vol_00{k}.mrc")[0] for k in (0, 1)]
    assert maps[0].shape == (16, 16, 16) and not np.allclose(maps[0], maps[1])
