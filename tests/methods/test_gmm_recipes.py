"""The Gaussian-mixture recipes end to end from the CLI on tiny data: ``cryolens train e2gmm`` on a two-state
blob set (one blob 8 px apart between the states) learns — the FRC rises over the epochs and the first
principal component of z separates the states — and a model file that is not a PDB/mmCIF is one line,
exit code 2."""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from cryolens.cli.main import main
from cryolens.imaging import CTFParams, random_rotations, render_images
from cryolens.io.mrc import write_stack
from cryolens.io.particles import Particles
from cryolens.io.star import write_star

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _drgn_data import PX, blob_volume  # noqa: E402


def two_state_star(tmp_path, n: int = 128, d: int = 16) -> tuple[Path, np.ndarray]:
    """Images of blob_volume(t = −1) (even rows) and (t = +1) (odd rows), random poses, shifts and CTFs,
    white noise of std 0.02; returns the STAR path and the state of each image."""
    g = torch.Generator().manual_seed(0)
    rots = random_rotations(n, generator=g)
    shifts = (torch.rand(n, 2, generator=g) - 0.5) * 2
    du = 8000 + 8000 * torch.rand(n, generator=g)
    ctf = CTFParams.create(du, du - 300, torch.rand(n, generator=g) * 3, 300, 2.7, 0.1)
    state = torch.arange(n) % 2
    images = torch.empty(n, d, d)
    for s, t in ((0, -1.0), (1, 1.0)):
        m = state == s
        images[m] = render_images(blob_volume(d, t), rots[m], shifts[m], ctf[m], PX)
    images += 0.02 * torch.randn(images.shape, generator=g)
    write_stack(tmp_path / "stack.mrcs", images.numpy(), PX)
    particles = Particles(PX, d, [str(tmp_path / "stack.mrcs")], np.zeros(n, int), np.arange(n), rots, shifts, ctf)
    write_star(tmp_path / "particles.star", particles)
    return tmp_path / "particles.star", state.numpy()


def test_e2gmm_from_the_cli_learns_the_two_states(tmp_path):
    """Reference-free (the back-projection as consensus, 12 Gaussians fitted to it), 6 epochs: the run folder
    has the map and z (128, 4); the mean FRC of the last epoch is above the first's; |corr(PC1 of z, state)|
    > 0.7 (seeds 0–3 give 0.84, 0.97, 0.91, 0.77 with these options)."""
    star, state = two_state_star(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "e2gmm", str(star), "--out", str(run), "--epochs", "6", "--n-gaussians", "12",
                 "--fit-steps", "150", "--hidden", "32", "--lr", "3e-3", "--batch-size", "16", "--quiet",
                 "--device", "cpu", "--no-report"]) == 0
    for name in ("map.mrc", "z.npy", "metrics.json", "checkpoint.pt", "log.jsonl"):
        assert (run / name).is_file(), name
    z = np.load(run / "z.npy")
    assert z.shape == (128, 4)
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert history[-1]["frc"] > history[0]["frc"] + 0.01
    zc = z - z.mean(0)
    pc1 = zc @ np.linalg.svd(zc, full_matrices=False)[2][0]
    assert abs(np.corrcoef(pc1, state)[0, 1]) > 0.7


def test_e2gmm_model_that_is_not_a_pdb_is_one_line_and_exit_2(tmp_path, capsys):
    """--model pointing at a text file: exit code 2, one line naming the file."""
    star, _ = two_state_star(tmp_path, n=8)
    bad = tmp_path / "model.pdb"
    bad.write_text("this is not a structure\n")
    assert main(["train", "e2gmm", str(star), "--out", str(tmp_path / "run"), "--model", str(bad), "--quiet",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]
