"""The heterogeneity benchmark (bench/tasks/hetero.yaml): every heterogeneous task of its default profile
discriminates (the true per-image maps beat the consensus map by ≥ 15 % per-image FSC-AUC, on a small
version of each task), while the old bundled-hinge task does not (the check can fail); profiles change
sizes as documented; the dry run prints estimates and refuses in one line; a generated dataset is scored
with AMI and |Spearman| end to end."""

import copy

import numpy as np
import pytest
import torch

from cryolens.bench.discrimination import MIN_GAIN, smaller, task_gain
from cryolens.bench.profiles import D32_CORRECTION, check_memory, estimate
from cryolens.bench.scoring import Truth, score
from cryolens.bench.suite import ensure_dataset, load_tasks, parse_tasks
from cryolens.cli.main import main
from cryolens.errors import InputError
from cryolens.methods.registry import MethodOutputs


def test_default_profile_discriminates_and_the_old_hinge_does_not():
    """Small versions (D = 20 over the same physical box, ≤ 4 states along the same range): each of the
    four generators' gain is ≥ 15 %; the default suite's 0–25° protease hinge gains < 15 % at D = 32."""
    tasks = [t for t in load_tasks("hetero", "default") if t.heterogeneity != "homogeneous"]
    generators = {t.dataset["heterogeneity"]["generator"] for t in tasks}
    assert generators == {"swing", "assembly", "mixture", "anm"}
    seen = set()
    for t in tasks:
        gen = t.dataset["heterogeneity"]["generator"]
        if gen in seen:
            continue  # the no-pose variant has the same states
        seen.add(gen)
        g = task_gain(smaller(t, 20, 4))["gains"]["nyquist"]
        assert g["gain"] >= MIN_GAIN, (t.name, g)
    old = [t for t in load_tasks("default") if t.name == "continuous-poses-snr0p1"][0]
    assert task_gain(smaller(old, 32, 6))["gains"]["nyquist"]["gain"] < MIN_GAIN


def test_profiles_resize_the_tasks():
    """cryobench: D = 128 at half the pixel size, SNR 0.01, 100,000 images, the swing through 360° in 100
    states; an unknown profile is one error naming the profiles there are."""
    default = {t.name: t for t in load_tasks("hetero", "default")}
    cb = {t.name: t for t in load_tasks("hetero", "cryobench")}
    assert set(default) == set(cb)
    for name, t in cb.items():
        assert t.dataset["box"] == 128 and t.snr == 0.01 and t.dataset["n_images"] == 100000
        assert t.dataset["pixel_size"] == pytest.approx(default[name].dataset["pixel_size"] / 2)
        assert default[name].dataset["box"] == 64
    assert cb["swing-poses"].dataset["heterogeneity"]["angle_range"] == [0, 360]
    assert cb["swing-poses"].dataset["heterogeneity"]["n_states"] == 100
    with pytest.raises(InputError, match="no profile 'gpu'.*default, cryobench"):
        load_tasks("hetero", "gpu")


def test_dry_run_prints_estimates_and_refuses_in_one_line(capsys):
    """The estimate scales a measurement by N/1000·(D/D_ref)² (a D = 32 one also by the measured correction,
    a run's epochs by their ratio), capped at the budget; a run over the memory budget is refused with one
    line and exit code 2."""
    t = load_tasks("hetero", "default")[0]  # D = 64, 500 images
    e = estimate(t, "backprojection", 1e9, reference_config={})
    assert e.measured and e.time_s == pytest.approx(7.4 * 0.5)  # 3.7 s per 500 images, stored per 1,000
    longer = copy.deepcopy(t)
    longer.options["method_config"]["cryodrgn"] = {"epochs": 6}
    assert estimate(t, "cryodrgn", 1e9, {}).time_s == pytest.approx(137.2 * 0.5)  # measured at the profile's 2
    assert estimate(longer, "cryodrgn", 1e9, {}).time_s == pytest.approx(137.2 * 0.5 * 6 / 2)  # epochs 6 of 2
    c = estimate(t, "cryosparc-refine", 1e9, {})  # measured at D = 32 only
    assert c.time_s == pytest.approx(31.0 * 0.5 * 4 * D32_CORRECTION)
    assert estimate(t, "cryosparc-refine", 20.0, {}).over_budget
    assert estimate(t, "nothing-measured", 123.0, {}).time_s == 123.0
    with pytest.raises(InputError, match="this machine has 0.1 GB"):
        check_memory([e], 100.0, "x")
    assert main(["bench", "run", "--profile", "cryobench", "--dry-run", "--memory-mb", "32000"]) == 0
    out = capsys.readouterr().out
    assert "task swing-poses: N=100000 D=128" in out and "runs:" in out
    assert main(["bench", "run", "--profile", "cryobench", "--dry-run", "--memory-mb", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs about" in err and "--memory-mb" in err


def test_generated_dataset_scored_with_ami_and_spearman(tmp_path):
    """A two-protein mixture (discrete) and an ANM motion (continuous), D = 16: labels equal to the truth
    (renamed) give AMI 1; latents equal to the truth's amplitude (negated) give |Spearman| 1 on the best
    axis, and a decoder that returns the true maps gives per-conformation FSC-AUC 0.5 (a map with itself)."""
    doc = {"base": {"box": 16, "pixel_size": 6.0, "n_images": 40, "snr": 1.0, "ctf": None},
           "tasks": [{"name": "mix", "heterogeneity": {"kind": "discrete", "generator": "mixture",
                                                        "models": ["1ubi", "1bhl"]}},
                     {"name": "anm", "heterogeneity": {"kind": "continuous", "generator": "anm", "model": "1ubi",
                                                        "n_states": 4, "amplitude_range": [-2, 2]}}]}
    mix, anm = parse_tasks(doc, "test")
    truth = Truth(ensure_dataset(mix, tmp_path))
    assert truth.state_values is None and truth.volumes.shape == (2, 16, 16, 16)
    out = MethodOutputs(pixel_size=6.0, labels=1 - truth.labels, volumes=truth.volumes.flip(0))
    m, _ = score(mix, truth, out, mix.known)
    assert m["ami"] == pytest.approx(1.0) and m["partition_from"] == "labels"
    truth = Truth(ensure_dataset(anm, tmp_path))
    assert sorted(set(np.round(truth.state_values, 6))) == pytest.approx([-2, -2 / 3, 2 / 3, 2])
    z = -truth.state_values[:, None].astype(np.float32)
    values = torch.as_tensor(np.unique(truth.state_values), dtype=torch.float32)

    def decode(q):  # the true map of the state whose (negated) amplitude is nearest
        return truth.volumes[(values[None] + q).abs().argmin(1)]

    m, _ = score(anm, truth, MethodOutputs(pixel_size=6.0, latents=z, decode=decode), anm.known)
    assert m["latent_abs_spearman"] == pytest.approx(1.0)
    # each state's mean latent decodes to that state's true map: FSC 1 in every shell, AUC 0.5
    assert m["conformation_mean_auc"] == pytest.approx(0.5, abs=1e-6) and len(m["conformation_fsc"]) == 4
