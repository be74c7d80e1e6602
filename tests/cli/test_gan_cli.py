"""``cryolens train cryogan`` end to end on a tiny simulated set (D 16): the run folder holds the map, the
per-epoch history of generator and critic losses, gradient penalty and Wasserstein estimate (metrics.json),
the training curves drawn from the engine's log, the checkpoint and the report."""

import json

import numpy as np
import starfile
import torch

from cryolens.cli.main import main
from cryolens.imaging import gaussian_volume
from cryolens.imaging.noise import background_sigma
from cryolens.io.dataset import read_images, read_particles
from cryolens.io.mrc import read_volume
from cryolens.simulate.dataset import simulate_dataset

TINY = ["--set", "critic_channels=4", "--set", "critic_max_channels=8", "--set", "norm_images=32",
        "--quiet", "--device", "cpu"]


def test_train_cryogan_writes_map_history_and_curves(tmp_path):
    vol = gaussian_volume(torch.tensor([[-2.0, 1.0, 0.0], [2.0, -1.0, 1.0]]), torch.tensor([1.5, 1.5]),
                          torch.tensor([1.0, 0.8]), 16)
    ds = simulate_dataset(tmp_path / "ds", vol, 32, 3.0, 1.0, seed=0, progress=False)
    run = tmp_path / "run"
    assert main(["train", "cryogan", str(ds / "particles.star"), "--out", str(run), "--epochs", "2",
                 "--n-critic", "2", "--batch-size", "4", *TINY]) == 0
    for name in ("map.mrc", "checkpoint.pt", "log.jsonl", "training_curves.png", "metrics.json", "report.html"):
        assert (run / name).is_file(), name
    m = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in m["history"]] == [1, 2]
    assert all({"loss", "critic", "gradient_penalty", "wasserstein"} <= set(h) for h in m["history"])
    # 32 real images an epoch, 2 × 4 per generator step: 4 steps an epoch
    assert m["history"][-1]["step"] == 8
    volume, px = read_volume(run / "map.mrc")
    assert volume.shape == (16, 16, 16) and px == 3.0 and volume.min() >= 0
    # the noise σ the generator used is the background σ of the normalisation sample (32 images)
    particles = read_particles(ds / "particles.star")
    sample = read_images(particles, np.arange(32))
    assert 0.5 * background_sigma(sample, 6.4) < m["noise_sigma"] < 2 * background_sigma(sample, 6.4)


def test_train_multi_cryogan_writes_centres_samples_and_populations(tmp_path):
    """``cryolens train multi-cryogan``: the k-means centres of the sampled maps as class maps, the first
    sampled maps, populations that sum to 1 over ``n_states`` centres (largest first), the GAN history."""
    vol = gaussian_volume(torch.tensor([[-2.0, 1.0, 0.0]]), torch.tensor([1.5]), torch.tensor([1.0]), 16)
    ds = simulate_dataset(tmp_path / "ds", vol, 32, 3.0, 1.0, seed=0, progress=False)
    run = tmp_path / "run"
    assert main(["train", "multi-cryogan", str(ds / "particles.star"), "--out", str(run), "--epochs", "1",
                 "--n-critic", "2", "--batch-size", "4", "--zdim", "2", "--decoder-channels", "4",
                 "--n-samples", "12", "--save-samples", "2", "--no-report", *TINY]) == 0
    for name in ("map.mrc", "class_001.mrc", "class_002.mrc", "samples/sample_000.mrc", "samples/sample_001.mrc",
                 "metrics.json"):
        assert (run / name).is_file(), name
    assert not (run / "samples" / "sample_002.mrc").exists()
    m = json.loads((run / "metrics.json").read_text())
    assert len(m["populations"]) == 2 and sum(m["populations"]) == 1 and m["populations"][0] >= m["populations"][1]
    assert {"critic", "wasserstein"} <= set(m["history"][0])


def test_train_cryovaegan_writes_latents_and_readouts(tmp_path):
    """``cryolens train cryovaegan`` on one view with the in-plane angle and the defocus varying: z per image,
    the read-out columns in the STAR file and the read-out metrics (values in range; their accuracy needs
    real training, see benchmarks/RESULTS.md)."""
    from cryolens.imaging.rotations import inplane_rotation
    from cryolens.io.star import read_star

    vol = gaussian_volume(torch.tensor([[-3.0, 1.0, 0.0], [2.0, -1.0, 1.0]]), torch.tensor([1.5, 1.2]),
                          torch.tensor([1.0, 0.6]), 16)
    psi = torch.linspace(-3.1, 3.1, 48)
    ds = simulate_dataset(tmp_path / "ds", vol, 48, 3.0, 2.0, rotations=inplane_rotation(psi), seed=0,
                          progress=False)
    run = tmp_path / "run"
    assert main(["train", "cryovaegan", str(ds / "particles.star"), "--out", str(run), "--epochs", "1",
                 "--zdim", "3", "--set", "enc_channels=4", "--set", "dec_channels=4", "--set", "hidden=16",
                 "--batch-size", "16", "--no-report", *TINY]) == 0
    assert np.load(run / "z.npy").shape == (48, 3)
    m = json.loads((run / "metrics.json").read_text())
    assert 0 <= m["inplane_circular_correlation"] <= 1 and -1 <= m["defocus_spearman"] <= 1
    assert m["angle_circularity"] >= 0 and {"discriminator", "recon", "kl"} <= set(m["history"][0])
    star = read_star(run / "particles.star")
    assert "rlnCryolensLatentAngle" in str(star)
    # the defocus coordinate is a read-out in Å: a least-squares fit to the defocus, so its mean is the defocus's
    table = starfile.read(run / "particles.star")["particles"]
    coordinate, defocus = table["rlnCryolensDefocusCoordinate"], 0.5 * (table["rlnDefocusU"] + table["rlnDefocusV"])
    assert abs(coordinate.mean() - defocus.mean()) < 0.2 * defocus.std() + 1.0
    # cryolens analyze reads the same angle and defocus off the saved z, and colours the latent plots by them
    assert main(["analyze", str(run), "--no-umap", "--clusters", "3"]) == 0
    saved = np.load(run / "analysis" / "readouts.npz")
    np.testing.assert_allclose(saved["angle_deg"], table["rlnCryolensLatentAngle"], atol=1e-3)
    np.testing.assert_allclose(saved["defocus_coordinate"], coordinate, rtol=1e-4)
    summary = json.loads((run / "analysis" / "summary.json").read_text())
    assert summary["n_particles"] == 48 and (run / "latent_angle_circle.png").is_file()
