"""``cryolens train multibody`` end to end on tiny data (two chains of eight Cα, the second turned about its own
centre): the learned turn follows the true one and eval-vol's loader decodes the run's body maps moved by the learned
motions; under the true motions, the bodies back-projected in their own frames beat the consensus. (A half turn is
learned by gradient descent in tests/volumes/test_rigid_group_decoder.py.)"""

import sys
from pathlib import Path

import numpy as np
import torch

from cryolens.cli.main import main
from cryolens.imaging.forward import ProjectorForward
from cryolens.io.atomic import Atoms, write_atoms
from cryolens.inference.multibody import best_motions, best_presence, moved_maps
from cryolens.io.mrc import read_volume
from cryolens.methods.backprojection import backproject
from cryolens.methods.mixture_run import load_mixture_run
from cryolens.methods.multibody import body_maps
from cryolens.metrics.fsc import fsc, fsc_auc
from cryolens.volumes.gaussian_mixture import from_atoms
from cryolens.volumes.mixture_decoder import RigidGroupDecoder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _drgn_data import PX  # noqa: E402
from test_gmm_recipes import two_state_star  # noqa: E402


def two_chains(angle_deg: float) -> Atoms:
    """Chain A: 8 Cα along x at y = −6 Å; chain B: an L of 8 Cα (5 along x at y = +6 Å, 3 along y), turned by
    ``angle_deg`` about the z axis through its own centre (every consecutive distance 3.8 Å)."""
    x = np.arange(8) * 3.8 - 13.3
    a = np.stack([x, np.full(8, -6.0), np.zeros(8)], 1)
    b = np.stack([np.r_[np.arange(5) * 3.8 - 7.6, np.full(3, 7.6)], np.r_[np.full(5, 6.0), 6.0 + 3.8 * np.arange(1, 4)],
                  np.zeros(8)], 1)
    t = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    cb = b.mean(0)
    b = (b - cb) @ rot.T + cb
    return Atoms(np.r_[a, b], ["C"] * 16, atom_names=["CA"] * 16, residue_names=["ALA"] * 16,
                 residue_numbers=np.r_[np.arange(1, 9), np.arange(1, 9)], chain_ids=["A"] * 8 + ["B"] * 8)


def _turned_set(tmp_path, angles: np.ndarray, com: np.ndarray, n: int):
    """(true maps (n, 16, 16, 16), STAR path, particles) of :func:`two_chains` at ``angles`` (one per image)."""
    truth = torch.stack([from_atoms(two_chains(a), 16, PX, sigma=3.0, center=com).render(None)[0] for a in angles])
    rows = {s: np.flatnonzero(np.arange(n) % 2 == s) for s in (0, 1)}

    def render(state, rots, shifts, ctf):
        out = []
        for j, i in enumerate(rows[state]):
            vol = from_atoms(two_chains(angles[i]), 16, PX, sigma=3.0, center=com)
            out.append(ProjectorForward()(vol, rots[j:j + 1], shifts[j:j + 1], ctf[j:j + 1], PX))
        return torch.cat(out)

    star, _, particles = two_state_star(tmp_path, render, n=n, noise=0.5)
    return truth.float(), star, particles


def test_multibody_learns_the_turn_and_reloads_its_maps(tmp_path):
    """Chain B turned by 0–45° (uniform, one angle per image): the learned turn of B relative to A follows the true
    angle (|Spearman| > 0.8, measured 0.91; the largest learned turn > 15°, measured 24°), and the per-image maps
    decoded from the run folder alone
    (eval-vol's loader) are the run's body maps moved by the learned motions."""
    com = two_chains(0.0).center_of_mass()
    n = 160
    angles = np.random.default_rng(0).uniform(0, 45, n)
    _, star, _ = _turned_set(tmp_path, angles, com, n)
    write_atoms(tmp_path / "base.pdb", two_chains(0.0))
    run = tmp_path / "run"
    opts = {"model": str(tmp_path / "base.pdb"), "zdim": 2, "enc_dim": 64, "dec_dim": 64, "enc_layers": 2,
            "dec_layers": 2, "sigma": 3.0}
    assert main(["train", "multibody", str(star), "--out", str(run), "--epochs", "12", "--lr", "3e-3",
                 "--batch-size", "16", "--quiet", "--device", "cpu", "--no-report",
                 *[a for k, v in opts.items() for a in ("--set", f"{k}={v}")]]) == 0
    assert sorted(p.name for p in (run / "bodies").iterdir()) == ["body_01.mrc", "body_02.mrc"]
    tm = load_mixture_run(run)
    zp = torch.as_tensor(np.load(run / "z.npy"))
    z, moves, shown = zp[:, :2], zp[:, 2], zp[:, 3:]  # z, whether the bodies move, each chain's presence
    assert zp.shape == (n, 5) and bool((shown == 1).all()), shown.mean(0)  # both chains are in every image
    with torch.no_grad():
        rot = tm.model.decoder.rigid_moves(z)[0]
    relative = torch.einsum("nji,njk->nik", rot[:, 0], rot[:, 1])  # chain B's turn relative to chain A's
    learned = np.degrees(np.arccos(np.clip((relative.diagonal(dim1=-2, dim2=-1).sum(-1).numpy() - 1) / 2, -1, 1)))
    learned[moves.numpy() == 0] = 0.0  # the images left at the base model's placement
    rho = np.corrcoef(np.argsort(np.argsort(learned)), np.argsort(np.argsort(angles)))[0, 1]
    assert abs(rho) > 0.8 and learned.max() > 15, (rho, learned.max())
    rows = zp[moves == 1][:3]
    with torch.no_grad():  # eval-vol's loader decodes the recipe's maps: the body maps moved by the learned motions
        want = moved_maps(_bodies(run), *tm.model.decoder.rigid_moves(rows[:, :2])[:2], tm.model.decoder.origins, PX)
        still = _bodies(run).sum(0)  # ... or left in place
    torch.testing.assert_close(tm.decode(rows), want)
    torch.testing.assert_close(tm.decode(torch.cat([z[:1], torch.tensor([[0.0, 1.0, 1.0]])], 1))[0], still)
    pres = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # moves, then A and B shown or not
    assert [len(m.coords) for m in tm.decode_models(torch.cat([z[:2], pres], 1))] == [8, 16]


def _bodies(run) -> torch.Tensor:
    return torch.stack([torch.as_tensor(read_volume(run / "bodies" / f"body_0{g}.mrc")[0]) for g in (1, 2)])


def test_bodies_back_projected_under_the_true_motions_beat_the_consensus(tmp_path):
    """With the true turns (a decoder whose chain-B axis-angle is exactly (0, 0, z)), the chains back-projected from
    every image in their own frames and moved back give per-image maps closer to each image's true map than the
    consensus back-projection, and far closer than with the motions of other images (turns of 0–120°, noise 0.5 ×
    the signal's std; D 16 at 3 Å/px leaves little room: the noise-free ceiling is 0.48 against 0.38); searched
    against those maps among turns of 0–120° every 10°, most images' best candidate is near their own turn."""
    com = two_chains(0.0).center_of_mass()
    n = 160
    angles = np.random.default_rng(1).uniform(0, 120, n)
    truth, star, particles = _turned_set(tmp_path, angles, com, n)
    base = torch.as_tensor(two_chains(0.0).coords - com, dtype=torch.float32)
    dec = RigidGroupDecoder(1, base, torch.tensor([0] * 8 + [1] * 8), layers=0)
    with torch.no_grad():
        dec.rigid.weight.zero_()
        dec.rigid.weight[6 + 2, 0] = 1.0  # chain B: ω_z = z
    z = np.radians(angles)[:, None].astype(np.float32)
    maps = body_maps(particles, dec, z, softness=0.0, pad=2, device="cpu", progress=False)

    def score(zz: np.ndarray) -> float:
        with torch.no_grad():
            decoded = moved_maps(maps, *dec.rigid_moves(torch.as_tensor(zz))[:2], dec.origins, PX)
        return float(np.mean([fsc_auc(c, 16) for c in fsc(decoded, truth)]))

    consensus = backproject(particles, progress=False).volume
    cons = np.mean([fsc_auc(c, 16) for c in fsc(consensus[None].expand(n, -1, -1, -1), truth)])
    got, shuffled = score(z), score(z[np.random.default_rng(2).permutation(n)])
    # measured: 0.390 (true motions), 0.378 (consensus), shuffled motions far below both
    assert got > cons + 0.005 and got > shuffled + 0.03, (got, cons, shuffled)
    # the search: among turns of 0, 10, …, 120° each image's best candidate against these body maps is its own turn
    grid = torch.as_tensor(np.radians(np.arange(0, 121, 10.0))[:, None], dtype=torch.float32)
    with torch.no_grad():
        rot, t, _ = dec.rigid_moves(grid)
    best = best_motions(particles, maps, rot, t, dec.origins, max_freq=0.5).argmax(1).numpy()
    miss = np.abs(np.arange(0, 121, 10.0)[best] - angles)
    # measured: median 6.7° (a perfect pick 2.5°, a random one ~35°), 68 % within 10°
    assert np.median(miss) <= 10.0 and np.mean(miss <= 20.0) > 0.8, (np.median(miss), np.mean(miss <= 20.0))


def test_presence_finds_the_chains_each_image_shows_and_beats_the_consensus(tmp_path):
    """Half the images show both chains, half chain A alone (noise 0.5 × the signal's std): searched against the
    bodies back-projected from all images, nearly every image's subset of chains is its true one (an image showing
    B alone, or neither, is never chosen when A is in every image); the bodies then back-projected from the images
    that show them give per-image maps closer to each image's true map than the consensus."""
    com = two_chains(0.0).center_of_mass()
    both, alone = two_chains(0.0), two_chains(0.0).subset(np.arange(16) < 8)
    vols = [from_atoms(m, 16, PX, sigma=3.0, center=com).render(None)[0] for m in (both, alone)]

    def render(state, rots, shifts, ctf):
        return ProjectorForward()(from_atoms((both, alone)[state], 16, PX, sigma=3.0, center=com),
                                  rots, shifts, ctf, PX).detach()

    _, state, particles = two_state_star(tmp_path, render, n=160, noise=0.5)
    truth = torch.stack(vols).float()[torch.as_tensor(state)]
    base = torch.as_tensor(both.coords - com, dtype=torch.float32)
    dec = RigidGroupDecoder(1, base, torch.tensor([0] * 8 + [1] * 8), layers=0)
    with torch.no_grad():
        dec.rigid.weight.zero_()  # no motion: the question is only which chains are there
    z = np.zeros((160, 1), np.float32)
    maps = body_maps(particles, dec, z, softness=0.0, pad=2, device="cpu", progress=False)
    with torch.no_grad():
        rot, t, _ = dec.rigid_moves(torch.as_tensor(z))
    shown = best_presence(particles, maps, rot, t, dec.origins, max_freq=0.5).numpy()
    want = np.stack([np.ones(160, bool), state == 0], 1)
    assert shown[:, 0].all() and (shown == want).all(1).mean() > 0.95, (shown == want).all(1).mean()
    refit = body_maps(particles, dec, z, softness=0.0, pad=2, device="cpu", progress=False, presence=shown)

    def score(decoded: torch.Tensor) -> float:
        return float(np.mean([fsc_auc(c, 16) for c in fsc(decoded, truth)]))

    with torch.no_grad():
        got = score(moved_maps(refit, rot, t, dec.origins, PX, torch.as_tensor(shown, dtype=torch.float32)))
    consensus = backproject(particles, progress=False).volume
    cons = score(consensus[None].expand(160, -1, -1, -1))
    assert got > cons + 0.02, (got, cons)
