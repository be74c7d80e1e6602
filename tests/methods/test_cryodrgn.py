"""cryoDRGN recipes: the homogeneous neural volume recovers a known map from noiseless images; a run
folder loads back (load_trained) and decodes the map it wrote; the (variational) autodecoder keeps one
z per image in input order; the recipes are registered with their published defaults."""

import numpy as np
import torch

from cryolens.analysis.writer import write_run
from cryolens.io.mrc import read_volume
from cryolens.io.runfolder import RunFolder
from cryolens.methods import Known, get
from cryolens.methods.cryodrgn import load_trained
from cryolens.metrics.fsc import fsc

from _drgn_data import blob_dataset, blob_volume

SMALL = {"dec_layers": 2, "dec_dim": 64, "batch_size": 16, "lr": 3e-3, "norm_images": 200}


def test_recipes_registered_with_published_defaults():
    """cryodrgn: 3×1024 encoder/decoder, zdim 8, Adam lr 1e-4, batch 8, 20 epochs, Gaussian PE σ 0.5,
    β = 1/zdim (None); homo has no z options; the autodecoder has the variational switch."""
    r = get("cryodrgn")
    d = r.defaults
    assert (d["enc_layers"], d["enc_dim"], d["dec_layers"], d["dec_dim"]) == (3, 1024, 3, 1024)
    assert (d["zdim"], d["lr"], d["batch_size"], d["epochs"], d["pe"], d["feat_sigma"], d["beta"]) == \
        (8, 1e-4, 8, 20, "gaussian", 0.5, None)
    assert r.learned and r.heterogeneity == "continuous" and r.needs == {"poses", "ctf"}
    assert "zdim" not in get("cryodrgn-homo").defaults
    assert get("cryodrgn-autodecoder").defaults["variational"] is False


def test_homogeneous_neural_volume_recovers_the_map(tmp_path):
    """cryodrgn-homo on 320 noiseless images (shifts, CTFs) of a blob volume: the rendered map's FSC
    against the true volume is ≥ 0.9 over shells 0–3 (to 0.4 × Nyquist); load_trained's decode gives the map
    the one writer wrote."""
    particles, _ = blob_dataset(tmp_path, 320, 16)
    rec = get("cryodrgn-homo")
    run = RunFolder(tmp_path / "run")
    out = rec.fit(particles, Known(), run, rec.config({**SMALL, "epochs": 8}), "cpu", False)
    write_run(out, particles, run, recipe=rec, report=False)  # the run folder, as the CLI and the benchmark
    curve = np.asarray(fsc(out.volume, blob_volume(16)))
    assert curve[:4].min() > 0.9, curve
    trained = load_trained(run.root)
    assert trained.latents is None and trained.box_size == 16 and trained.pixel_size == particles.pixel_size
    written, px = read_volume(run.path("map.mrc"))
    assert px == particles.pixel_size
    torch.testing.assert_close(trained.decode(None)[0], torch.from_numpy(written), atol=1e-5, rtol=1e-4)


def test_variational_autodecoder_keeps_one_latent_per_image(tmp_path):
    """cryodrgn-autodecoder with variational=true: z.npy has one row per particle equal to the
    per-image means of the table, a KL term is logged and positive, and load_trained decodes a batch
    of z to one map each."""
    particles, _ = blob_dataset(tmp_path, 64, 16, hetero=True)
    rec = get("cryodrgn-autodecoder")
    run = RunFolder(tmp_path / "run")
    cfg = rec.config({**SMALL, "epochs": 2, "zdim": 2, "variational": True})
    out = rec.fit(particles, Known(), run, cfg, "cpu", False)
    write_run(out, particles, run, recipe=rec, report=False)
    z = np.load(run.path("z.npy"))
    assert z.shape == (64, 2)
    trained = load_trained(run.root)
    np.testing.assert_array_equal(z, trained.model.table.mu.detach().numpy())
    assert trained.model.table.logvar is not None
    import json
    log = [json.loads(x) for x in run.path("log.jsonl").read_text().splitlines()]
    assert all(r["kl"] > 0 for r in log if "kl" in r)
    maps = trained.decode(torch.from_numpy(z[:3]))
    assert maps.shape == (3, 16, 16, 16)
    assert out.decode is not None
