"""Per-image Cα RMSD of decoded atomic models against the simulator's ground-truth models: exact
models (moved rigidly, atoms reordered, a residue missing) score 0; a method that returns its base
model for every image scores the base's RMSD, which is also computed here independently (Kabsch on
the Cα in file order, no residue pairing)."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import torch

from cryolens.bench.atomic_scoring import per_image_ca_rmsd
from cryolens.bench.scoring import _ca_rmsd_metrics
from cryolens.io.atomic import read_atoms, write_atoms
from cryolens.metrics.atomic import kabsch
from cryolens.simulate import bundled_hinge, bundled_model, rotate_about_axis


def _states(tmp_path):
    base = read_atoms(bundled_model("4E43"))
    hinge = bundled_hinge(base)
    moved = rotate_about_axis(base, hinge.selection, hinge.axis, hinge.pivot, np.deg2rad(30.0))
    paths = [write_atoms(tmp_path / "model_000.pdb", base), write_atoms(tmp_path / "model_001.pdb", moved)]
    return base, moved, paths


def _plain_ca_rmsd(a, b):
    """Independent: Cα of both models in file order (same atoms; altloc B copies left out), Kabsch, RMSD."""
    x = a.coords[(a.atom_names == "CA") & ~a.het & (a.altlocs != "B")]
    y = b.coords[(b.atom_names == "CA") & ~b.het & (b.altlocs != "B")]
    r, t = kabsch(x, y)
    return float(np.sqrt((((x @ r.T + t) - y) ** 2).sum(1).mean()))


def test_exact_models_score_zero_and_the_base_scores_its_distance(tmp_path):
    base, moved, paths = _states(tmp_path)
    truth = [read_atoms(p) for p in paths]
    labels = np.array([0, 1] * 10)
    latents = labels[:, None].astype(np.float32)
    rot = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64))[0]
    if torch.det(rot) < 0:
        rot = -rot

    def exact(z):  # each image's true model, rigidly moved, atoms reversed, its first residue dropped
        out = []
        for k in z[:, 0].long().tolist():
            a = truth[k]
            keep = a.residue_numbers != a.residue_numbers[0]
            a = a.subset(np.flatnonzero(keep)[::-1])
            out.append(dataclasses.replace(a, coords=a.coords @ rot.numpy().T + 7.0))
        return out

    r = per_image_ca_rmsd(exact, latents, paths, labels, base_model=paths[0], n_images=8, batch_size=3)
    assert len(r["rmsd"]) == 8 and np.all(r["rmsd"] < 1e-3)
    expected = _plain_ca_rmsd(truth[0], truth[1])
    assert expected > 3.0  # the 30° hinge moves the Cα by several Å
    assert np.allclose(r["base_rmsd"], np.where(labels[r["index"]] == 1, expected, 0.0), atol=1e-3)

    def frozen(z):  # a method that learned nothing: its base for every image
        return [truth[0]] * z.shape[0]

    task = SimpleNamespace(dataset={"model": str(paths[0])})
    tr = SimpleNamespace(model_files=paths, labels=labels)
    outs = SimpleNamespace(decode_models=frozen, latents=latents)
    arrays = {}
    m = _ca_rmsd_metrics(task, tr, outs, n_images=20, device=None, arrays=arrays)
    assert np.allclose(arrays["per_image_ca_rmsd"], np.where(labels == 1, expected, 0.0), atol=1e-3)
    assert m["per_image_ca_rmsd_median_A"] == m["per_image_ca_rmsd_base_median_A"]
