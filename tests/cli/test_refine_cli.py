"""`cryolens refine` end to end, in-process: the run folder, the final STAR (read back by our reader
and by relion_reconstruct), resume, the modal recipe, and bad input."""

import json

import numpy as np
import pytest
import torch

from cryolens.bench.relion import reconstruct_star
from cryolens.cli.main import main
from cryolens.io.atomic import read_atoms
from cryolens.io.mrc import write_volume
from cryolens.io.star import read_star
from cryolens.metrics.fsc import fsc
from cryolens.methods.registry import get
from cryolens.simulate import bundled_model
from cryolens.simulate.dataset import simulate_dataset
from cryolens.simulate.density import atoms_to_volume

D, PX = 24, 4.0


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """60 images of 4E43 (D = 24, 4 Å/px, SNR 10, CTF, shifts ≤ 1.5 px) and the true map as start."""
    root = tmp_path_factory.mktemp("refine_cli")
    vol = atoms_to_volume(read_atoms(bundled_model("4E43")), D, PX)
    ds = simulate_dataset(root / "ds", vol, 60, PX, 10.0, shift_std=0.8, shift_max=1.5, seed=5, progress=False)
    init = root / "init.mrc"
    write_volume(init, vol.numpy(), PX)
    return ds / "particles.star", init, vol


def _args(star, init, out, *extra):
    return ["refine", str(star), "--init-map", str(init), "--out", str(out), "--lowpass", "30", "--quiet",
            "--set", "healpix_order=1", "--set", "local_order=2", "--set", "max_order=2", *extra]


@pytest.fixture(scope="module")
def refined(small, tmp_path_factory):
    """One iteration of `cryolens refine` on the small set (run once for the tests that read it)."""
    star, init, _ = small
    out = tmp_path_factory.mktemp("refined") / "run"
    assert main(_args(star, init, out, "--max-iterations", "1", "--reference", str(init))) == 0
    return out


def test_refine_writes_run_folder_and_star(refined):
    """One iteration writes maps, per-iteration files, plots, a report and a final STAR whose poses
    our reader returns as the run's, with both half-sets labelled."""
    out = refined
    for name in ("map.mrc", "half1.mrc", "half2.mrc", "particles.star", "metrics.json", "config.json", "fsc.png",
                 "fsc_iterations.png", "resolution_history.png", "angular_distribution.png", "sections.png",
                 "report.html", "checkpoint.pt", "iter001_half1.mrc", "iter001_fsc.json", "iter001_particles.star"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert m["iterations"] == 1 and m["initial_map"].startswith("file")
    assert "resolution_vs_ground_truth_05_A" in m
    back = read_star(out / "particles.star")
    it1 = read_star(out / "iter001_particles.star")
    assert torch.allclose(back.rotations, it1.rotations) and torch.allclose(back.shifts, it1.shifts)
    assert sorted(set(np.asarray(back.extra["rlnRandomSubset"]).astype(int).tolist())) == [1, 2]
    pngs = list(out.glob("*.png"))  # every plot of the folder is embedded in the report
    assert len(pngs) >= 5 and (out / "report.html").read_text().count("data:image/png;base64,") == len(pngs)


@pytest.mark.relion
def test_relion_reconstructs_the_final_star(small, refined, tmp_path):
    """relion_reconstruct reads the final STAR (poses, origins, CTF) and its map agrees with ours
    (FSC ≥ 0.8 over shells 1–6: the same poses give the same map)."""
    star, out = small[0], refined
    rel = reconstruct_star((out / "particles.star").resolve(), star.parent, ctf=True, output=str(tmp_path / "r.mrc"))
    ours = torch.from_numpy(np.asarray(__import__("mrcfile").read(out / "map.mrc"), dtype=np.float32))
    assert float(np.min(fsc(torch.from_numpy(rel), ours)[1:7])) >= 0.8


def test_resume_continues_and_bad_input(small, tmp_path, capsys):
    """--resume continues a run to a higher iteration cap; resuming with other options, without a
    checkpoint, with a missing initial map or with a non-cyclic --relax-sym is a one-line error with
    exit code 2."""
    star, init, _ = small
    out = tmp_path / "run"
    assert main(_args(star, init, out, "--max-iterations", "1")) == 0
    assert "half-map resolution" in capsys.readouterr().out
    assert main(_args(star, init, out, "--max-iterations", "2", "--resume")) == 0
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 2
    assert main(_args(star, init, out, "--max-iterations", "2", "--resume", "--recipe", "cryosparc-refine")) == 2
    assert "different options" in capsys.readouterr().err
    assert main(_args(star, init, tmp_path / "none", "--resume")) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["refine", str(star), "--init-map", str(tmp_path / "missing.mrc"), "--out", str(tmp_path / "x")]) == 2
    assert "initial map not found" in capsys.readouterr().err
    assert main(_args(star, init, tmp_path / "sym", "--relax-sym", "D2")) == 2
    assert "only cyclic groups" in capsys.readouterr().err


def test_modal_recipe_is_registered_and_runs(small, tmp_path):
    """cryosparc-refine is in the registry with modal pose inference and refines (one iteration) to a
    map that still correlates with the truth at low resolution (FSC ≥ 0.8 over shells 1–3)."""
    star, init, vol = small
    assert get("cryosparc-refine").defaults["pose_inference"] == "modal"
    assert get("relion-refine3d").defaults["pose_inference"] == "posterior"
    out = tmp_path / "run"
    assert main(_args(star, init, out, "--max-iterations", "1", "--recipe", "cryosparc-refine")) == 0
    m = torch.from_numpy(np.asarray(__import__("mrcfile").read(out / "map.mrc"), dtype=np.float32))
    assert float(np.min(fsc(m, vol)[1:4])) >= 0.8
