"""analyze_latents end to end with a toy decoder whose answer is known in closed form: a Gaussian
blob whose centre moves along x by 4 px per unit of z[0]."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image, ImageSequence
import pytest
import torch

from cryolens.analysis.latent_run import analyze_latents, load_values
from cryolens.errors import InputError
from cryolens.io import read_star, read_volume, write_stack
from cryolens.io.particles import Particles

D, PX = 16, 2.0


def blob_decode(z: torch.Tensor) -> torch.Tensor:
    """(B, L) → (B, D, D, D): a unit Gaussian (σ = 1.5 px) centred at x = 4·z[0] px from the box centre."""
    c = torch.arange(D, dtype=torch.float32, device=z.device) - D // 2
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    cx = 4.0 * z[:, 0].float()
    r2 = (xx[None] - cx[:, None, None, None]) ** 2 + yy[None] ** 2 + zz[None] ** 2
    return torch.exp(-r2 / (2 * 1.5 ** 2))


def centroid_x(v: np.ndarray) -> float:
    c = np.arange(D) - D // 2
    return float((v.sum((0, 1)) * c).sum() / v.sum())


def test_analyze_latents_writes_maps_plots_and_report(tmp_path):
    """The files are written; z.npy is z; PC1 correlates with the known coordinate (Spearman ≈ 1);
    each decoded map's blob sits where the decoder puts it for that latent point: at 4 × the
    percentiles of z[0] along PC1 (the traversal), and at 4 × z[0] of the on-data particle of each
    k-means centre; the maps carry the voxel size; the report embeds the plots; subsets are written."""
    rng = np.random.default_rng(0)
    n = 300
    t = rng.uniform(-1, 1, n)
    z = np.concatenate([t[:, None], 0.02 * rng.normal(size=(n, 3))], 1).astype(np.float32)
    stack = write_stack(tmp_path / "s.mrcs", np.zeros((n, D, D), np.float32), PX)
    particles = Particles(pixel_size=PX, box_size=D, image_files=[str(stack)], image_file_index=np.zeros(n),
                          image_index=np.arange(n), rotations=torch.eye(3).expand(n, 3, 3))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"command": "train cryodrgn", "arguments": {}}))
    (run / "metrics.json").write_text(json.dumps({"loss": 1.0}))
    s = analyze_latents(z, blob_decode, run, PX, values={"hinge": t}, particles=particles, n_clusters=5,
                        n_traversal=6, n_path_maps=5, subset_clusters=[[0, 1]], subset_pc_boxes=[{0: (0.0, 1e9)}])
    a = run / "analysis"
    np.testing.assert_array_equal(np.load(a / "z.npy"), z)
    assert np.load(a / "umap.npy").shape == (n, 2)
    assert np.load(a / "z_pca.npy").shape == (n, 4)
    assert s["spearman"]["hinge"]["PC1"] > 0.99
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["loss"] == 1.0 and metrics["latent_spearman_pc1_hinge"] > 0.99
    # PC1 traversal: blob centres at 4 × the 5…95th percentiles of z[0] (PC1 ≈ +x̂ for this cloud)
    q = np.percentile(z[:, 0], np.linspace(5, 95, 6))
    for j in range(6):
        v, px = read_volume(a / "pc1" / f"vol_{j:03d}.mrc")
        assert px == pytest.approx(PX) and v.shape == (D, D, D)
        assert centroid_x(v) == pytest.approx(4 * q[j], abs=0.1)
    # k-means: each map is the decoded on-data particle nearest its centre
    nearest = np.load(a / "kmeans_particles.npy")
    labels = np.load(a / "kmeans_labels.npy")
    assert len(nearest) == 5 and labels.shape == (n,)
    for j in range(5):
        v, _ = read_volume(a / "kmeans" / f"vol_{j:03d}.mrc")
        assert centroid_x(v) == pytest.approx(4 * z[nearest[j], 0], abs=0.05)
    # graph path: from low to high PC1, maps along it move monotonically in x
    path = np.load(a / "path_particles.npy")
    assert z[path[0], 0] < -0.8 and z[path[-1], 0] > 0.8
    xs = [centroid_x(read_volume(a / "path" / f"vol_{j:03d}.mrc")[0]) for j in range(5)]
    assert (np.diff(xs) > 0).all()
    # subsets
    assert len(read_star(a / "subset_kmeans_0-1.star")) == int(np.isin(labels, [0, 1]).sum())
    assert (a / "subset_kmeans_0-1.cs").is_file()
    assert len(read_star(a / "subset_pcbox_0.star")) == int((np.load(a / "z_pca.npy")[:, 0] >= 0).sum())
    # plots and report
    for name in ("latent_pca_hinge.png", "latent_umap_hinge.png", "latent_pca_kmeans.png", "latent_umap_kmeans.png",
                 "latent_pc1_traversal.png", "latent_kmeans_maps.png", "latent_path_maps.png",
                 "latent_pc1_vs_hinge.png"):
        assert (run / name).stat().st_size > 1000
    # the traversal animated: 6 maps forward and back (10 frames); in the z = D/2 section (the first D·3 columns)
    # the blob's x centroid follows PC1 on the way out and retraces it on the way back
    with Image.open(run / "latent_pc1_traversal.gif") as gif:
        frames = [np.asarray(f.convert("L"), dtype=np.float64) for f in ImageSequence.Iterator(gif)]
    assert len(frames) == 10 and frames[0].shape == (3 * D, 9 * D)
    cols = np.arange(3 * D)
    xs = [float((f[:, :3 * D].sum(0) * cols).sum() / f[:, :3 * D].sum()) for f in frames]
    assert (np.diff(xs[:6]) > 0).all() and np.allclose(xs[6:], xs[4:0:-1])
    html = (run / "report.html").read_text()
    assert 'alt="latent_pc1_traversal.gif" src="data:image/gif' in html
    assert 'alt="latent_pca_hinge.png"' in html and "latent_spearman_pc1_hinge" in html
    assert json.loads((a / "summary.json").read_text())["kmeans"]["k"] == 5


def test_analyze_latents_bad_input(tmp_path):
    """Non-finite latents, a value array of the wrong length and subsets without particles are input
    errors naming the problem; load_values picks the (N,) non-constant arrays of an .npz."""
    z = np.random.default_rng(1).normal(size=(50, 2))
    bad = z.copy()
    bad[7, 1] = np.nan
    with pytest.raises(InputError, match="row 7"):
        analyze_latents(bad, None, tmp_path / "r", 1.0, umap=False)
    with pytest.raises(InputError, match="49 values for 50"):
        analyze_latents(z, None, tmp_path / "r", 1.0, values={"a": np.zeros(49)}, umap=False)
    with pytest.raises(InputError, match="need the particles"):
        analyze_latents(z, None, tmp_path / "r", 1.0, umap=False, n_clusters=3, subset_clusters=[[0]])
    np.savez(tmp_path / "gt.npz", angle=np.arange(50.0), const=np.ones(50), rotations=np.zeros((50, 3, 3)))
    assert list(load_values(tmp_path / "gt.npz", 50)) == ["angle"]
    with pytest.raises(InputError, match="'rotations'"):
        load_values(tmp_path / "gt.npz", 50, keys=["rotations"])
