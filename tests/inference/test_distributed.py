"""Many processes (``torch.distributed``, gloo on the CPU): the collectives against a one-process
computation, and the EM family — auto-refinement, Class3D (searched and ``skip_align``) and ab initio —
giving on 2 ranks the answer of 1 rank: maps with FSC ≥ 0.999 at every shell, the same poses and classes.

The two ranks are spawned processes (one thread each) that read the same STAR file; the one-rank run is
the same function called in this process."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryolens.imaging.grids import lowpass_volume
from cryolens.imaging.rotations import geodesic_distance
from cryolens.io.atomic import read_atoms
from cryolens.io.dataset import read_particles
from cryolens.metrics.fsc import fsc
from cryolens.simulate import bundled_model
from cryolens.simulate.dataset import read_ground_truth, simulate_dataset
from cryolens.simulate.density import atoms_to_volume

from _inference_data import blob_volume

D, PX = 24, 4.0


# --- the jobs, run once in this process and once on each of 2 ranks ------------------------------------
def _job_collectives(data: dict) -> dict:
    from cryolens.inference.distributed import (all_reduce_sum, collective_seconds, gather_rows, merge_rows, on_ranks,
                                                shard, world)

    rank, n_ranks = world()
    mine = shard(np.arange(11))
    x = torch.arange(11, dtype=torch.float64)[mine] ** 2
    total = x.sum().reshape(1)
    all_reduce_sum(total)
    rows = gather_rows(torch.as_tensor(mine), torch.stack([x, -x], 1), 11)
    flags = torch.zeros(11, dtype=torch.bool)
    flags[mine] = torch.as_tensor(mine % 3 == 0)
    owned = torch.zeros(11, dtype=torch.bool)
    owned[mine] = True
    merge_rows([flags], owned)
    out = {"mine": mine, "total": total, "rows": rows, "flags": flags, "rank": rank, "n_ranks": n_ranks}
    for dev in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):  # the tensors stay on their device
        t = torch.full((3,), float(rank + 1), device=dev)
        all_reduce_sum(t)
        g = gather_rows(torch.as_tensor(mine, device=dev), torch.as_tensor(mine, device=dev).double()[:, None], 11)
        made = on_ranks([lambda j=j, d=dev: torch.full((2,), 10.0 * j + rank, device=d) for j in range(3)], dev)
        out[dev] = {"sum": t, "gathered": g, "made": made}
    out["waited"] = collective_seconds()
    return out


def _job_refine(data: dict) -> dict:
    from cryolens.inference import autorefine as A

    p = read_particles(data["refine"])
    cfg = A.RefineConfig(initial_lowpass=30.0, healpix_order=1, local_order=3, max_order=2, offset_range=2.0,
                         offset_step=1.0, max_iterations=2, batch_size=25, max_coarse=8, max_significant=16)
    calls = []
    r = A.auto_refine(p, torch.load(data["refine_start"]), config=cfg, progress=False,
                      on_iteration=lambda state: calls.append(state.iteration))
    return {"volume": r.volume, "halves": r.half_maps, "rotations": r.rotations, "shifts": r.shifts,
            "resolution": [h["resolution_A"] for h in r.history], "timing": [h["timing"] for h in r.history],
            "snapshots": calls}


def _job_classify(data: dict) -> dict:
    from cryolens.methods.class3d import classify

    p = read_particles(data["classes"])
    out = {}  # searched: from the two maps low-passed to 16 Å; skip_align: from their average
    for name, start, extra in (("searched", "classes_starts", {"healpix_order": 1, "offset_range": 2.0,
                                                               "offset_step": 1.0}),
                               ("skip_align", "classes_start", {"skip_align": True, "reference_folds": 0}),
                               ("skip_align_folds", "classes_start", {"skip_align": True, "reference_folds": 4})):
        cfg = {"n_classes": 2, "n_iterations": 3, "initial_lowpass": 16.0, "batch_size": 30, **extra}
        r = classify(p, torch.load(data[start]), cfg, progress=False)
        out[name] = {"volumes": r.volumes, "labels": r.labels, "rotations": r.rotations, "shifts": r.shifts,
                     "probability": r.class_probability, "prior": r.class_prior,
                     "timing": [h["timing"] for h in r.history]}
    return out


def _job_abinit(data: dict) -> dict:
    from cryolens.inference.abinit import AbInitio, AbinitConfig

    p = read_particles(data["classes"])
    ab = AbInitio(p, AbinitConfig(n_iterations=6, grid_level=1, batch_size=40, final_batch_size=60, max_shift=2.0,
                                  final_resolution=16.0, seed=0))
    ab.init()
    while not ab.done:
        ab.step()
    return {"volumes": ab.result_volumes(), "assign": ab.assign(), "history": ab.state.history}


def _job_fstdiff_steps(data: dict) -> dict:
    """FSTdiff's pose table started by the search against the 30 Å map, then one of its strategy's epoch ends (a
    search again and a Gauss-Newton step with Laplace spreads), no training between."""
    from types import SimpleNamespace

    from cryolens.inference.training import sample_images
    from cryolens.inference.variational_laplace import VariationalPoseSteps
    from cryolens.inference.variational_setup import build_model, starting_poses
    from cryolens.methods import get

    p = read_particles(data["refine"])
    start = torch.load(data["refine_start"])
    cfg = get("fstdiff").config({"start_poses": "search", "search_levels": 1, "max_shift": 2.0})
    torch.manual_seed(0)
    train_data, rot = starting_poses(p, cfg, start, "cpu")
    model = build_model(train_data, cfg, sample_images(p, 90, 0), start, rot)
    trainer = SimpleNamespace(model=model, particles=train_data, device=torch.device("cpu"))
    VariationalPoseSteps(1, (1,), 1, 2.0).on_epoch_end(0, trainer)
    t = model.poses
    return {"start": rot, "start_shifts": train_data.shifts,
            **{k: getattr(t, k).detach().clone() for k in ("base", "delta", "shift_mean", "log_rot_std")}}


JOBS = {"collectives": _job_collectives, "refine": _job_refine, "classify": _job_classify, "abinit": _job_abinit,
        "fstdiff_steps": _job_fstdiff_steps}


def _worker(rank: int, world: int, init_file: str, data: dict, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save({name: job(data) for name, job in JOBS.items()}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The data, then every job on 1 rank (here) and on 2 ranks (spawned): ``(one, [rank0, rank1])``."""
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("dist")
    vol = atoms_to_volume(read_atoms(bundled_model("4E43")), D, PX)
    ref = simulate_dataset(root / "refine", vol, 90, PX, 10.0, shift_std=0.8, shift_max=1.5, seed=3, progress=False)
    torch.save(lowpass_volume(vol, 30.0, PX), root / "refine_start.pt")
    blobs = [blob_volume(D, seed=0), blob_volume(D, n_blobs=6, seed=5)]
    blobs = [b / b.std() * vol.std() for b in blobs]
    cls = simulate_dataset(root / "classes", blobs, 120, PX, 1.0, shift_std=0.5, shift_max=1.0, seed=4,
                           progress=False)
    torch.save(lowpass_volume(0.5 * (blobs[0] + blobs[1]), 16.0, PX), root / "classes_start.pt")
    torch.save(torch.stack([lowpass_volume(b, 16.0, PX) for b in blobs]), root / "classes_starts.pt")
    data = {"refine": str(ref / "particles.star"), "refine_start": str(root / "refine_start.pt"),
            "classes": str(cls / "particles.star"), "classes_start": str(root / "classes_start.pt"),
            "classes_starts": str(root / "classes_starts.pt"),
            "labels": read_ground_truth(cls)["labels"]}
    one = {name: job(data) for name, job in JOBS.items()}
    mp.spawn(_worker, args=(2, str(root / "init"), data, str(root)), nprocs=2, join=True)
    two = [torch.load(root / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    return one, two, data


def _same_map(a: torch.Tensor, b: torch.Tensor) -> None:
    """FSC ≥ 0.999 at every shell that holds signal (a map made in a cropped working box, as Class3D's and
    ab initio's are, is zero beyond it: those shells hold rounding only)."""
    from cryolens.imaging.spectra import power_spectrum

    curve = fsc(a, b)
    power = power_spectrum(a.double()).numpy()[:len(curve)]
    held = power > 1e-10 * power.max()
    assert held[1:].sum() >= 3
    assert float(np.min(curve[1:][held[1:]])) >= 0.999, curve


def test_collectives_match_one_process(runs):
    """shard: contiguous shares in rank order covering every index once; all_reduce_sum: the total;
    gather_rows: every row in place on every rank; merge_rows: each row from its owner (bools too)."""
    _, two, _ = runs
    a, b = two[0]["collectives"], two[1]["collectives"]
    assert (a["rank"], b["rank"], a["n_ranks"]) == (0, 1, 2)
    np.testing.assert_array_equal(np.concatenate([a["mine"], b["mine"]]), np.arange(11))
    assert abs(len(a["mine"]) - len(b["mine"])) <= 1
    want = torch.arange(11, dtype=torch.float64) ** 2
    for r in (a, b):
        assert float(r["total"]) == float(want.sum())
        torch.testing.assert_close(r["rows"], torch.stack([want, -want], 1), rtol=0, atol=0)
        assert r["flags"].tolist() == [i % 3 == 0 for i in range(11)]
        assert r["waited"] > 0  # the collectives' seconds are counted
        for dev in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
            got = r[dev]
            assert got["sum"].device.type == dev and got["sum"].tolist() == [3.0] * 3  # 1 + 2
            assert got["gathered"].device.type == dev and got["gathered"][:, 0].tolist() == list(range(11))
            # job j made on rank j mod 2 (value 10 j + its rank), then on every rank
            assert [m.device.type for m in got["made"]] == [dev] * 3
            assert [m.tolist() for m in got["made"]] == [[0.0] * 2, [11.0] * 2, [20.0] * 2]


def test_two_rank_refinement_equals_one_rank(runs):
    """Auto-refinement (2 iterations, 90 images of 4E43): the same maps (FSC ≥ 0.999), poses and
    resolutions on 2 ranks as on 1; both ranks hold the same result."""
    one, two, _ = runs
    a = one["refine"]
    for r in two:
        b = r["refine"]
        _same_map(a["volume"], b["volume"])
        for h in (0, 1):
            _same_map(a["halves"][h], b["halves"][h])
        change = torch.rad2deg(geodesic_distance(a["rotations"].double(), b["rotations"].double()))
        assert float(change.max()) < 1e-3, change.max()
        torch.testing.assert_close(a["shifts"], b["shifts"])
        assert np.allclose(a["resolution"], b["resolution"], rtol=1e-6)
    assert torch.equal(two[0]["refine"]["volume"], two[1]["refine"]["volume"])
    # each iteration's timing joined over the ranks, the same record on both; the snapshots (on_iteration)
    # written by rank 1 (on rank 0's node) while rank 0 writes the checkpoint
    assert two[0]["refine"]["timing"] == two[1]["refine"]["timing"]
    for t in two[0]["refine"]["timing"]:
        per = t["per_rank"]
        assert all(len(v) == 2 for v in per.values()) and max(per["collective_s"]) > 0
        for r in (0, 1):
            parts = [per[k][r] for k in ("estep_s", "mstep_s", "write_s", "collective_s")]
            assert min(parts) >= 0 and sum(parts) <= per["wall_s"][r]
    assert (a["snapshots"], two[0]["refine"]["snapshots"], two[1]["refine"]["snapshots"]) == ([1, 2], [], [1, 2])
    # and the refinement did something: the map moved off its 30 Å start
    assert not math.isclose(a["resolution"][-1], 30.0, rel_tol=0.05)


@pytest.mark.parametrize("mode", ["searched", "skip_align", "skip_align_folds"])
def test_two_rank_class3d_equals_one_rank(runs, mode):
    """Class3D (3 iterations, 120 images of two maps): the same class maps (FSC ≥ 0.999), labels,
    class probabilities, priors and poses on 2 ranks as on 1 (with 4 leave-fold-out references too, whose folds'
    sums are joined over the ranks); the classes are the simulated ones (≥ 90 %; the folds had reached only 84 %
    here while the low shells went without a prior, ``minres_map`` 5: tests/inference/test_class_small_set.py)."""
    one, two, data = runs
    a = one["classify"][mode]
    for r in two:
        b = r["classify"][mode]
        for k in range(2):
            _same_map(a["volumes"][k], b["volumes"][k])
        np.testing.assert_array_equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["probability"], b["probability"], rtol=0, atol=1e-4)
        torch.testing.assert_close(a["prior"], b["prior"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(a["rotations"], b["rotations"])
        torch.testing.assert_close(a["shifts"], b["shifts"])
    # every iteration's timing joined over the ranks (the same record on both, one row per rank)
    assert two[0]["classify"][mode]["timing"] == two[1]["classify"][mode]["timing"]
    assert len(two[0]["classify"][mode]["timing"]) == 3 and len(a["timing"][0]["per_rank"]["wall_s"]) == 1
    for t in two[0]["classify"][mode]["timing"]:
        assert all(len(v) == 2 for v in t["per_rank"].values()) and t["estep_s"] > 0 and t["mstep_s"] > 0
    truth = np.asarray(data["labels"])
    acc = max(np.mean(a["labels"] == truth), np.mean(a["labels"] == 1 - truth))
    assert acc >= 0.9, acc


def test_two_rank_ab_initio_equals_one_rank(runs):
    """Ab initio (6 mini-batches split between the ranks): the same map (FSC ≥ 0.999), the same class
    priors and mean log-evidence per step, and the same MAP assignment of every image."""
    one, two, _ = runs
    a = one["abinit"]
    for r in two:
        b = r["abinit"]
        _same_map(a["volumes"][0], b["volumes"][0])
        for ha, hb in zip(a["history"], b["history"]):
            assert math.isclose(ha["mean_log_evidence"], hb["mean_log_evidence"], rel_tol=1e-5)
        torch.testing.assert_close(a["assign"]["rotations"], b["assign"]["rotations"])
        torch.testing.assert_close(a["assign"]["shifts"], b["assign"]["shifts"])


def test_two_rank_fstdiff_pose_steps_equal_one_rank(runs):
    """FSTdiff's start search, its later search and its Gauss-Newton step (90 images of 4E43), each image's
    share on one rank and the rows merged: on 2 ranks the table of 1 rank (means within 0.01°, shifts and
    log-spreads to 10⁻⁴), on both ranks; the step moved the means off the searched grid."""
    one, two, _ = runs
    a = one["fstdiff_steps"]
    def deg(x, y):
        return torch.rad2deg(geodesic_distance(x, y))

    assert float(deg(a["start"], a["base"]).median()) > 0.05  # the Gauss-Newton step did move them
    for r in two:
        b = r["fstdiff_steps"]
        assert float(deg(a["start"], b["start"]).max()) < 0.01
        torch.testing.assert_close(a["start_shifts"], b["start_shifts"], rtol=0, atol=1e-4)
        assert float(deg(a["base"], b["base"]).max()) < 0.01
        for k in ("delta", "shift_mean", "log_rot_std"):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4)
