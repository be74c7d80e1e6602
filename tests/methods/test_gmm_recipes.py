"""The Gaussian-mixture recipes end to end from the CLI on tiny data: ``cryolens train e2gmm`` on a two-state
blob set (one blob 8 px apart between the states) learns — the FRC rises over the epochs and the first
principal component of z separates the states — and a model file that is not a PDB/mmCIF is one line,
exit code 2; ``cryolens train cryofold`` from the open state of a 16-residue Cα hairpin learns the hinged
state (its decoded model moves most of the way to the true one) and writes the models; ``atomvae`` runs
its warm-up schedule without poses."""

import json
import sys
from pathlib import Path

import gemmi
import numpy as np
import pytest
import torch

from cryolens.cli.main import main
from cryolens.imaging import CTFParams, random_rotations, render_images
from cryolens.imaging.forward import ProjectorForward
from cryolens.io.atomic import Atoms, read_atoms, write_atoms
from cryolens.io.checkpoint import load_checkpoint
from cryolens.io.mrc import write_stack
from cryolens.io.particles import Particles
from cryolens.io.star import write_star
from cryolens.methods import cryofold
from cryolens.methods.registry import get
from cryolens.volumes.gaussian_mixture import from_atoms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _drgn_data import PX, blob_volume  # noqa: E402


def two_state_star(tmp_path, render, n: int = 128, d: int = 16, noise: float = 0.02):
    """Images ``render(state, rotations, shifts, ctf)`` of state 0 (even rows) and 1 (odd rows), random poses,
    shifts and CTFs, white noise of std ``noise`` × the images' std; returns (STAR path, states, particles)."""
    g = torch.Generator().manual_seed(0)
    rots = random_rotations(n, generator=g)
    shifts = (torch.rand(n, 2, generator=g) - 0.5) * 2
    du = 8000 + 8000 * torch.rand(n, generator=g)
    ctf = CTFParams.create(du, du - 300, torch.rand(n, generator=g) * 3, 300, 2.7, 0.1)
    state = torch.arange(n) % 2
    images = torch.empty(n, d, d)
    for s in (0, 1):
        m = state == s
        images[m] = render(s, rots[m], shifts[m], ctf[m]).detach()
    images += noise * images.std() * torch.randn(images.shape, generator=g)
    write_stack(tmp_path / "stack.mrcs", images.numpy(), PX)
    particles = Particles(PX, d, [str(tmp_path / "stack.mrcs")], np.zeros(n, int), np.arange(n), rots, shifts, ctf)
    write_star(tmp_path / "particles.star", particles)
    return tmp_path / "particles.star", state.numpy(), particles


def blobs(state, rots, shifts, ctf):
    """blob_volume at t = −1 (state 0) or +1 (state 1), D = 16."""
    return render_images(blob_volume(16, 2.0 * state - 1.0), rots, shifts, ctf, PX)


def test_e2gmm_from_the_cli_learns_the_two_states(tmp_path):
    """Reference-free (the back-projection as consensus, 12 Gaussians fitted to it), 10 epochs: the run folder
    has the map and z (128, 4); the mean FRC of the last epoch is above the first's; |corr(PC1 of z, state)|
    > 0.7 (seeds 0–3 give 0.90, 0.98, 0.86, 0.90 with these options; 0.74, 0.97, 0.94, 0.27 after 6 epochs)."""
    star, state, _ = two_state_star(tmp_path, blobs, noise=0.01)
    run = tmp_path / "run"
    assert main(["train", "e2gmm", str(star), "--out", str(run), "--epochs", "10", "--n-gaussians", "12",
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


def test_e2gmm_sizes_its_mixture_from_the_consensus_map(tmp_path):
    """With ``n_gaussians`` left at 0 the neutral mixture has ``gaussians_for_map`` of the back-projection of
    the particles (the consensus it is fitted to); a given count is kept; a negative one is refused."""
    from cryolens.errors import InputError
    from cryolens.methods.backprojection import backproject
    from cryolens.methods.e2gmm import E2GMMConfig, neutral_mixture
    from cryolens.volumes.gaussian_mixture import gaussians_for_map

    _, _, particles = two_state_star(tmp_path, blobs, noise=0.01)
    expected = gaussians_for_map(torch.as_tensor(backproject(particles, seed=0, progress=False).volume))
    assert expected > 12
    assert neutral_mixture(particles, E2GMMConfig(fit_steps=2), "cpu", False).n_gaussians == expected
    assert neutral_mixture(particles, E2GMMConfig(fit_steps=2, n_gaussians=12), "cpu", False).n_gaussians == 12
    with pytest.raises(InputError, match="n_gaussians"):
        neutral_mixture(particles, E2GMMConfig(n_gaussians=-1), "cpu", False)


def test_e2gmm_model_that_is_not_a_pdb_is_one_line_and_exit_2(tmp_path, capsys):
    """--model pointing at a text file: exit code 2, one line naming the file."""
    star, _, _ = two_state_star(tmp_path, blobs, n=8)
    bad = tmp_path / "model.pdb"
    bad.write_text("this is not a structure\n")
    assert main(["train", "e2gmm", str(star), "--out", str(tmp_path / "run"), "--model", str(bad), "--quiet",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]


def hairpin(angle_deg: float, two_chains: bool = False) -> Atoms:
    """16 Cα atoms (ALA 1–16, chain A; ``two_chains``: residues 11–16 are chain B): two 8-residue strands 3.8 Å
    apart along x joined by a 3.8 Å turn; the second strand turned by ``angle_deg`` about the y axis through the
    turn (every consecutive distance 3.8 Å)."""
    x = np.r_[np.arange(8) * 3.8, np.arange(7, -1, -1) * 3.8] - 13.3
    c = np.stack([x, np.r_[np.full(8, -1.9), np.full(8, 1.9)], np.zeros(16)], 1)
    a, pivot = np.deg2rad(angle_deg), np.array([13.3, 0.0, 0.0])
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    c[8:] = (c[8:] - pivot) @ rot.T + pivot
    return Atoms(c, ["C"] * 16, atom_names=["CA"] * 16, residue_names=["ALA"] * 16, residue_numbers=np.arange(1, 17),
                 chain_ids=["A"] * 10 + ["B" if two_chains else "A"] * 6)


def test_cryofold_from_the_cli_moves_the_base_model_to_the_hinged_state(tmp_path):
    """Images of the hairpin at 0° and 40° (the mixture's own projections, σ 4.5 Å, noise std 0.5 × signal);
    cryofold from the 0° model, 10 epochs: the MSE falls, |corr(PC1 of z, state)| > 0.8, and the model decoded
    at the mean z of the 40° images is within half the base model's Cα RMSD of the true 40° model (measured:
    2.9 vs 7.7 Å), the 0° images' within 1.5 Å of the base (0.5 Å)."""
    com = hairpin(0.0).center_of_mass()

    def render(state, rots, shifts, ctf):
        vol = from_atoms(hairpin(40.0 * state), 16, PX, sigma=4.5, center=com)
        return ProjectorForward()(vol, rots, shifts, ctf, PX)

    star, state, particles = two_state_star(tmp_path, render, noise=0.5)
    write_atoms(tmp_path / "base.pdb", hairpin(0.0))
    run = tmp_path / "run"
    opts = {"model": str(tmp_path / "base.pdb"), "zdim": 2, "enc_dim": 64, "dec_dim": 64, "enc_layers": 2,
            "dec_layers": 2}
    assert main(["train", "cryofold", str(star), "--out", str(run), "--epochs", "10", "--lr", "3e-3",
                 "--batch-size", "16", "--quiet", "--device", "cpu", "--no-report",
                 *[a for k, v in opts.items() for a in ("--set", f"{k}={v}")]]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["history"][-1]["mse"] < 0.8 * metrics["history"][0]["mse"]
    z = np.load(run / "z.npy")
    zc = z - z.mean(0)
    assert abs(np.corrcoef(zc @ np.linalg.svd(zc, full_matrices=False)[2][0], state)[0, 1]) > 0.8
    model = cryofold.build(particles, get("cryofold").config(opts), "cpu")
    model.load_state_dict(load_checkpoint(run / "checkpoint.pt")["model"])
    model.eval()
    rmsd = {}
    for s in (0, 1):
        decoded = model.volume.params(torch.as_tensor(z[state == s].mean(0, keepdims=True)))[0][0].detach().numpy()
        rmsd[s] = np.sqrt(((decoded + com - hairpin(40.0 * s).coords) ** 2).sum(1).mean())
    base_rmsd = np.sqrt(((hairpin(0.0).coords - hairpin(40.0).coords) ** 2).sum(1).mean())
    assert rmsd[1] < 0.5 * base_rmsd and rmsd[0] < 1.5, (rmsd, base_rmsd)
    # the models written by the writer: at the mean z (re-read by gemmi, to 1e-3 Å) and 10 along PC1
    mean_model = model.volume.atomic_models(torch.as_tensor(z.mean(0, keepdims=True)))[0]
    np.testing.assert_allclose(read_atoms(run / "model.cif").coords, mean_model.coords, atol=1e-3)
    traversal = gemmi.read_structure(str(run / "models_pc1.cif"))
    assert len(traversal) == 10 and all(m.count_atom_sites() == 16 for m in traversal)
    # eval-vol --models at the z of particles 0 and 1, from the run folder alone; analyze runs on it
    out = tmp_path / "decoded"
    assert main(["eval-vol", str(run), "--z-index", "0", "1", "--models", "--out", str(out), "--device", "cpu"]) == 0
    assert (out / "vol_001.mrc").is_file()
    written = gemmi.read_structure(str(out / "models.cif"))
    expected = model.volume.atomic_models(torch.as_tensor(z[:2]))
    for m, e in zip(written, expected):
        np.testing.assert_allclose([a.pos.tolist() for r in m[0] for a in r], e.coords, atol=1e-3)
    assert len(written) == 2
    assert main(["analyze", str(run), "--clusters", "2", "--no-umap", "--device", "cpu"]) == 0
    assert len(gemmi.read_structure(str(run / "analysis" / "models_kmeans.cif"))) == 2
    assert len(gemmi.read_structure(str(run / "analysis" / "models_pc2.cif"))) == 10


def test_atomvae_from_the_cli_warms_up_the_poses_then_trains_jointly(tmp_path, monkeypatch, capsys):
    """Poses not given: atomvae from the 0° hairpin (one Gaussian per atom), 2 warm-up epochs then 2 joint: the
    log has no KL in the warm-up and a positive one after; the warm-up lowers the images' error; the STAR holds a
    proper rotation per image, z is (96, 2), and the metrics score the encoder's rotations against the STAR's
    (whether the warm-up learns poses: tests/inference/test_atomvae_poses.py). ``--refine-poses`` with 2
    clusters: two searches, each over one k-means group of z (together every image once), whose poses are the
    STAR's. ``frame_selection=A`` (the strands as chains A and B): every model decoded from the run folder has chain
    A where the base model has it (the motion seen from chain A); a chain the model lacks: one line, exit 2, before
    any training."""
    import cryolens.inference.pose_refine as pr
    from cryolens.imaging.rotations import rigid_fit
    from cryolens.io.star import read_star

    calls, original = [], pr.refine_poses

    def spy(volume, parts, settings, device, indices=None, n_levels=None):
        out = original(volume, parts, settings, device, indices, n_levels)
        calls.append((np.asarray(indices), out[0]))
        return out

    monkeypatch.setattr(pr, "refine_poses", spy)

    com = hairpin(0.0).center_of_mass()

    def render(state, rots, shifts, ctf):
        vol = from_atoms(hairpin(40.0 * state), 16, PX, sigma=4.5, center=com)
        return ProjectorForward()(vol, rots, None, ctf, PX)

    star, _, _ = two_state_star(tmp_path, render, n=96, noise=0.1)
    write_atoms(tmp_path / "base.pdb", hairpin(0.0, two_chains=True))
    run = tmp_path / "run"
    args = ["train", "atomvae", str(star), "--out", str(run), "--model", str(tmp_path / "base.pdb"),
            "--epochs", "4", "--warmup-epochs", "2", "--zdim", "2", "--lr", "1e-3", "--batch-size", "16",
            "--set", "enc_dim=64", "--set", "dec_dim=64", "--set", "enc_layers=2", "--set", "dec_layers=2",
            "--refine-poses", "--refine-clusters", "2", "--refine-base-level", "1", "--refine-levels", "1",
            "--quiet", "--device", "cpu", "--no-report"]
    capsys.readouterr()
    assert main(args + ["--set", "frame_selection=Q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "base.pdb" in err[0] and "A, B" in err[0] and not (run / "checkpoint.pt").exists()
    assert main(args + ["--set", "frame_selection=A"]) == 0
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [h["kl"] == 0.0 for h in history] == [True, True, False, False]
    assert len(calls) == 2 and sorted(np.concatenate([c[0] for c in calls]).tolist()) == list(range(96))
    refined = torch.zeros(96, 3, 3)
    for idx, r in calls:
        refined[torch.as_tensor(idx)] = r
    torch.testing.assert_close(read_star(run / "particles.star").rotations.float(), refined, atol=1e-4, rtol=0)
    assert "median_rotation_error_refined_deg" in json.loads((run / "metrics.json").read_text())
    assert history[1]["mse"] < history[0]["mse"]
    assert 0.0 <= json.loads((run / "metrics.json").read_text())["median_rotation_error_encoder_deg"] <= 180.0
    rots = read_star(run / "particles.star").rotations
    eye = torch.eye(3, dtype=rots.dtype).expand(96, 3, 3)
    torch.testing.assert_close(rots @ rots.transpose(1, 2), eye, atol=1e-4, rtol=0)
    assert np.load(run / "z.npy").shape == (96, 2)
    out = tmp_path / "decoded"
    assert main(["eval-vol", str(run), "--z-index", "0", "1", "2", "--models", "--out", str(out),
                 "--device", "cpu"]) == 0
    base = torch.as_tensor(hairpin(0.0).coords[:10])
    for m in gemmi.read_structure(str(out / "models.cif")):
        chain_a = torch.as_tensor([r[0].pos.tolist() for r in m["A"]], dtype=torch.float64)
        r, t = rigid_fit(chain_a, base)
        assert float((r - torch.eye(3, dtype=torch.float64)).abs().max()) < 1e-3 and float(t.abs().max()) < 2e-3
