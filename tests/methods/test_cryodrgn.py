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


def _loss_and_grads(model, batch, old_net: bool):
    """Loss and every parameter's gradient of one training step (the reparametrisation noise fixed);
    ``old_net``: the decoder as it was before issue 29, z concatenated to every point's encoding."""
    field = model.field
    if old_net:
        def concatenated(coords, z):
            x = field.encoding(coords)
            return field.mlp(torch.cat([x, z[:, None, :].to(x.dtype).expand(-1, x.shape[1], -1)], dim=-1))
        field._net = concatenated
    model.zero_grad()
    torch.manual_seed(1)
    terms = model(batch)
    terms["loss"].backward()
    if old_net:
        del field._net
    return terms["loss"].detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_training_loss_and_gradients_equal_the_concatenated_decoder_input(tmp_path):
    """The cryodrgn model with z entering the decoder's first layer once per image (issue 29's speed-up)
    gives the loss and the gradient of every parameter of the formulation it replaced — z concatenated
    to the encoding of each lattice point — on one batch (CTF, shifts, VAE noise): float64 to 1e-10,
    float32 to float32 rounding."""
    from cryolens.inference.engine import ParticleBatches
    from cryolens.inference.latent_model import build_model
    from cryolens.methods.cryodrgn import CryoDRGNConfig

    particles, _ = blob_dataset(tmp_path, 6, hetero=True)
    cfg = CryoDRGNConfig(zdim=3, enc_layers=1, enc_dim=16, dec_layers=2, dec_dim=16)
    batch = ParticleBatches(particles)[list(range(6))]
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
        model = build_model(particles.box_size, particles.pixel_size, 6, cfg, "vae").to(dtype)
        b = {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
             for k, v in batch.items()}
        loss, grads = _loss_and_grads(model, b, old_net=False)
        loss_old, grads_old = _loss_and_grads(model, b, old_net=True)
        assert loss.dtype == dtype and loss > 0
        torch.testing.assert_close(loss, loss_old, rtol=tol, atol=0)
        assert set(grads) == set(grads_old) and grads["field.mlp.inp.weight"].abs().max() > 0
        for name in grads:
            scale = grads_old[name].abs().max()
            torch.testing.assert_close(grads[name], grads_old[name], rtol=0, atol=tol * max(float(scale), 1e-30),
                                       msg=name)
