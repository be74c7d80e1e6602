"""The training engine: a run killed mid-epoch and resumed from its last checkpoint continues
bit-for-bit (same loss sequence and weights as an uninterrupted run, on the CPU), and a 2-process
gloo DDP run equals a 1-process run with the same global batch."""

import sys
from pathlib import Path

import pytest
import torch

import dataclasses

from cryolens.inference.engine import Trainer, TrainConfig, read_log
from cryolens.inference.latent_model import build_model
from cryolens.inference.training import hartley_std
from cryolens.methods.cryodrgn import CryoDRGNConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "methods"))
from _drgn_data import blob_dataset  # noqa: E402

TINY = CryoDRGNConfig(zdim=2, enc_layers=1, enc_dim=32, dec_layers=1, dec_dim=32, pe_dim=4)


def _trainer(particles, out, mode="vae", epochs=3, batch=8):
    model = build_model(particles.box_size, particles.pixel_size, len(particles), TINY, mode)
    model.set_norm(hartley_std(particles, 64))
    cfg = TrainConfig(epochs=epochs, batch_size=batch, lr=1e-3, seed=3)
    return Trainer(model, particles, cfg, out, "cpu", progress=False)


class _Killed(Exception):
    pass


def test_resume_after_a_kill_continues_bit_for_bit(tmp_path):
    """VAE (reparametrised sampling draws random numbers every step): kill the run at step 20 of 24
    (mid-epoch 3), resume from the epoch-2 checkpoint in a fresh process state: the log's loss terms and
    the final weights equal the uninterrupted run's exactly."""
    particles, _ = blob_dataset(tmp_path, 64, 16, hetero=True)
    ref = _trainer(particles, tmp_path / "a")
    ref.fit()
    ref_log = [r for r in read_log(tmp_path / "a" / "log.jsonl") if not r.get("epoch_end")]

    run = _trainer(particles, tmp_path / "b")
    forward = run.model.forward
    calls = {"n": 0}

    def dying(batch):
        calls["n"] += 1
        if calls["n"] > 20:
            raise _Killed
        return forward(batch)

    run.net = dying
    with pytest.raises(_Killed):
        run.fit()
    assert len(read_log(tmp_path / "b" / "log.jsonl")) > 16 + 2  # steps of epoch 3 were logged, then cut
    torch.manual_seed(12345)  # a different global RNG state: the checkpoint must restore it
    again = _trainer(particles, tmp_path / "b")
    again.fit(resume=True)
    log = [r for r in read_log(tmp_path / "b" / "log.jsonl") if not r.get("epoch_end")]
    assert [(r["step"], r["loss"], r["mse"], r["kl"]) for r in log] == \
        [(r["step"], r["loss"], r["mse"], r["kl"]) for r in ref_log]
    for (name, a), b in zip(ref.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_with_other_model_options_says_which_parameter_differs(tmp_path):
    """A checkpoint of a decoder 32 wide, resumed by one 48 wide: an InputError naming the checkpoint, the
    first parameter whose shape differs and both shapes (the CLI prints it as one line); the checkpoint
    file is left as it was."""
    from cryolens.errors import InputError

    particles, _ = blob_dataset(tmp_path, 16, 16, hetero=True)
    _trainer(particles, tmp_path / "a", epochs=1).fit()
    ck = tmp_path / "a" / "checkpoint.pt"
    before = ck.read_bytes()
    wide = build_model(particles.box_size, particles.pixel_size, len(particles), dataclasses.replace(TINY, dec_dim=48),
                       "vae")
    wide.set_norm(1.0)
    other = Trainer(wide, particles, TrainConfig(epochs=2, batch_size=8, lr=1e-3, seed=3), tmp_path / "a", "cpu",
                    progress=False)
    shapes = r"checkpoint\.pt: .* is \(32, .*\) in the checkpoint but \(48, .*config\.json"
    with pytest.raises(InputError, match=shapes):
        other.fit(resume=True)
    assert ck.read_bytes() == before


def _ddp_worker(rank, world, init_file, data_dir, out_dir):
    import torch.distributed as dist

    from cryolens.io.star import read_star
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        particles = read_star(Path(data_dir) / "particles.star")
        tr = _trainer(particles, Path(out_dir), mode="homo", epochs=2, batch=8)
        tr.fit()
        if rank == 0:
            torch.save(tr.model.state_dict(), Path(out_dir) / "state.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_ddp_equals_one_process(tmp_path):
    """cryodrgn-homo, 32 images, global batch 8, 2 epochs: 2 gloo processes (4 images each per step,
    gradients averaged by DDP) end with the same weights as 1 process (8 per step) to float32 rounding."""
    import torch.multiprocessing as mp

    from cryolens.io.star import write_star
    particles, _ = blob_dataset(tmp_path, 32, 16)
    write_star(tmp_path / "particles.star", particles)
    one = _trainer(particles, tmp_path / "one", mode="homo", epochs=2)
    one.fit()
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), str(tmp_path / "two")), nprocs=2,
             join=True)
    two = torch.load(tmp_path / "two" / "state.pt")
    n_steps = len([r for r in read_log(tmp_path / "two" / "log.jsonl") if not r.get("epoch_end")])
    assert n_steps == 8
    for name, a in one.model.state_dict().items():
        torch.testing.assert_close(two[name], a, rtol=1e-4, atol=1e-5, msg=name)
    # and the runs did move the weights (the comparison is not between two untrained models)
    fresh = _trainer(particles, tmp_path / "fresh", mode="homo").model.state_dict()
    assert not torch.allclose(fresh["field.mlp.out.weight"], two["field.mlp.out.weight"])


def test_cpu_bf16_autocast_runs_linear_layers_in_bf16_and_trains_like_fp32(tmp_path, monkeypatch):
    """``cpu_amp``: the decoder's matrix products run in bfloat16 (seen by a hook on every
    ``nn.Linear``), the weights stay float32, and 10 epochs reach the fp32 run's loss within 5%.
    (The CPU check is patched to "native bfloat16" so that the path runs on any CPU.)"""
    from cryolens.inference import engine

    monkeypatch.setattr(engine, "cpu_bf16_native", lambda: True)
    particles = blob_dataset(tmp_path, 64, 16, hetero=False)[0]
    finals, seen = {}, {}
    for cpu_amp in (False, True):
        model = build_model(particles.box_size, particles.pixel_size, len(particles), TINY, "homo")
        model.set_norm(hartley_std(particles, 64))
        dtypes = set()
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.register_forward_hook(lambda mod, inp, out, seen_here=dtypes: seen_here.add(out.dtype))
        cfg = TrainConfig(epochs=10, batch_size=8, lr=3e-3, seed=3, cpu_amp=cpu_amp)
        tr = Trainer(model, particles, cfg, tmp_path / f"amp{cpu_amp}", "cpu", progress=False)
        tr.fit()
        log = [r for r in read_log(tmp_path / f"amp{cpu_amp}" / "log.jsonl") if not r.get("epoch_end")]
        finals[cpu_amp] = sum(r["loss"] for r in log[-8:]) / 8
        first = sum(r["loss"] for r in log[:8]) / 8
        assert finals[cpu_amp] < 0.9 * first  # it trains
        seen[cpu_amp] = dtypes
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert seen[False] == {torch.float32} and seen[True] == {torch.bfloat16}
    assert abs(finals[True] - finals[False]) < 0.05 * finals[False]


def test_cpu_amp_falls_back_to_float32_where_bfloat16_is_emulated(tmp_path, monkeypatch):
    """Where the CPU lacks bfloat16 instructions PyTorch emulates them (a bfloat16-autocast linear
    layer ~11x slower than float32 on an AMD EPYC without AVX512-BF16): ``cpu_amp`` then warns in one
    line and trains in float32. The check reads the CPU's flags (x86 and ARM names), and times a
    linear layer only where there are none."""
    import pytest

    from cryolens.inference import engine

    for flags, native in (({"avx2", "avx512f"}, False), ({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True),
                          ({"asimd", "bf16"}, True), ({"asimd"}, False)):
        monkeypatch.setattr(engine, "_cpu_flags", lambda flags=flags: flags)
        engine.cpu_bf16_native.cache_clear()
        assert engine.cpu_bf16_native() is native, flags
    timed = []
    monkeypatch.setattr(engine, "_cpu_flags", lambda: None)
    monkeypatch.setattr(engine, "_bf16_speedup_measured", lambda: timed.append(1) or 0.09)
    engine.cpu_bf16_native.cache_clear()
    assert engine.cpu_bf16_native() is False and timed == [1]
    engine.cpu_bf16_native.cache_clear()
    monkeypatch.setattr(engine, "cpu_bf16_native", lambda: False)
    particles = blob_dataset(tmp_path, 16, 16, hetero=False)[0]
    model = build_model(particles.box_size, particles.pixel_size, len(particles), TINY, "homo")
    with pytest.warns(RuntimeWarning, match="cpu_amp ignored: this CPU has no native bfloat16"):
        tr = Trainer(model, particles, TrainConfig(epochs=1, cpu_amp=True), tmp_path / "run", "cpu", progress=False)
    assert tr.amp_dtype is None


def test_epoch_images_draws_the_head_of_each_epochs_shuffled_order(tmp_path):
    """epoch_images = 24 of 64: each epoch runs 3 batches of 8 distinct images, the first 24 of that
    epoch's permutation (so the epochs see different images), and the epoch record counts 24."""
    particles, _ = blob_dataset(tmp_path, 64, 16, hetero=True)
    tr = _trainer(particles, tmp_path / "run", epochs=2)
    tr.cfg.epoch_images = 24
    seen = []
    forward = tr.model.forward

    def spy(batch):
        seen.append(batch["index"].tolist())
        return forward(batch)

    tr.net = spy
    tr.fit()
    assert [len(b) for b in seen] == [8] * 6
    per_epoch = [sum(seen[0:3], []), sum(seen[3:6], [])]
    for e, idx in enumerate(per_epoch):
        assert len(set(idx)) == 24
        tr.sampler.set_epoch(e)
        assert idx == list(tr.sampler)[:24]
    assert set(per_epoch[0]) != set(per_epoch[1])
    ends = [r for r in read_log(tmp_path / "run" / "log.jsonl") if r.get("epoch_end")]
    assert [r["step"] for r in ends] == [3, 6]


class _KnownPoses:
    """An InferenceStrategy that fills in given rotations (the metadata's) and records its hook calls."""

    def __init__(self, rotations):
        self.rotations, self.calls = rotations.clone(), []

    def on_epoch_start(self, epoch, trainer):
        self.calls.append(("start", epoch))

    def before_batch(self, batch, trainer):
        self.calls.append(("batch", trainer.epoch))
        return {**batch, "rotation": self.rotations[batch["index"]]}

    def on_epoch_end(self, epoch, trainer):
        self.calls.append(("end", epoch))

    def state_dict(self):
        return {"rotations": self.rotations}

    def load_state_dict(self, state):
        self.rotations = state["rotations"].clone()


def test_a_strategy_plugs_into_the_engine_with_the_direct_path_s_numbers(tmp_path):
    """An InferenceStrategy that supplies the rotations of each batch (the metadata's, stripped from the
    particles) gives exactly the losses and weights of the run where the batches carry them; its hooks run
    start → one before_batch per step → end each epoch, and its state is in the checkpoint and comes back on
    resume."""
    import dataclasses

    from cryolens.inference.strategy import InferenceStrategy

    particles, _ = blob_dataset(tmp_path, 24, 16)
    direct = _trainer(particles, tmp_path / "direct", mode="homo", epochs=2)
    direct_log = direct.fit()
    blind = dataclasses.replace(particles, rotations=None)
    strategy = _KnownPoses(particles.rotations)
    assert isinstance(strategy, InferenceStrategy)
    model = build_model(particles.box_size, particles.pixel_size, len(particles), TINY, "homo")
    model.set_norm(hartley_std(particles, 64))
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-3, seed=3)
    via = Trainer(model, blind, cfg, tmp_path / "via", "cpu", progress=False, strategies=[strategy])
    assert [r["loss"] for r in via.fit()] == [r["loss"] for r in direct_log]
    for a, b in zip(direct.model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert strategy.calls == [("start", 0), *[("batch", 0)] * 3, ("end", 0), ("start", 1), *[("batch", 1)] * 3,
                              ("end", 1)]
    saved = torch.load(tmp_path / "via" / "checkpoint.pt", weights_only=False)["strategies"]
    torch.testing.assert_close(saved[0]["rotations"], particles.rotations)
    fresh = _KnownPoses(torch.zeros_like(particles.rotations))
    again = Trainer(build_model(16, particles.pixel_size, 24, TINY, "homo"), blind, cfg, tmp_path / "via", "cpu",
                    progress=False, strategies=[fresh])
    assert again.resume()
    torch.testing.assert_close(fresh.rotations, particles.rotations)


def test_make_optimizer_on_the_cpu_updates_like_the_per_parameter_adam_loop():
    """The engine's optimizer (the fused CPU kernel) gives the same parameters as torch's reference
    for-loop Adam / AdamW (``fused=False, foreach=False``) after 5 steps on the same gradients, float32
    tolerance, with two parameter groups of different learning rates."""
    from cryolens.inference.engine import TrainConfig, make_optimizer

    for name, ref in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        torch.manual_seed(0)
        a = [torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(5))]
        b = [torch.nn.Parameter(p.detach().clone()) for p in a]
        start = [p.detach().clone() for p in a]
        cfg = TrainConfig(lr=1e-2, weight_decay=0.01, optimizer=name)
        opt = make_optimizer([{"params": a[:1]}, {"params": a[1:], "lr": 3e-2}], cfg, torch.device("cpu"))
        want = ref([{"params": b[:1]}, {"params": b[1:], "lr": 3e-2}], lr=1e-2, weight_decay=0.01,
                   fused=False, foreach=False)
        assert opt.defaults["fused"] is True
        for _ in range(5):
            g = [torch.randn(p.shape) for p in a]
            for p, q, gi in zip(a, b, g):
                p.grad, q.grad = gi.clone(), gi.clone()
            opt.step()
            want.step()
        for p, q, p0 in zip(a, b, start):
            assert (p - p0).abs().min() > 1e-3  # every entry moved
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
