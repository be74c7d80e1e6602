"""Simulated datasets: what is written reads back with the exact ground truth, the noise is at the
target SNR, populations are respected, and chunked writing changes nothing."""

import json

import mrcfile
import numpy as np
import pytest
import torch

import cryolens.simulate.dataset as simds
from cryolens.cli.main import main as cli_main
from cryolens.errors import InputError
from cryolens.imaging import CTFParams, random_rotations, render_images
from cryolens.io.atomic import read_atoms
from cryolens.io.dataset import read_images
from cryolens.io.star import read_star
from cryolens.simulate import (atoms_to_volume, bundled_hinge, bundled_model, read_ground_truth, simulate_dataset,
                               volumes_from_models)

D, PX = 32, 3.0


@pytest.fixture(scope="module")
def states():
    """Two states of 4E43 in one frame: closed and the hinge opened by 25°."""
    atoms = read_atoms(bundled_model("4E43"))
    (opened,), _ = bundled_hinge(atoms).trajectory(atoms, 1, (25.0, 25.0))
    return volumes_from_models([atoms, opened], D, PX), [atoms, opened]


def _rerender(gt, vols, idx):
    """Noiseless images of ``idx`` re-rendered from the saved ground truth (its own state, pose, CTF)."""
    idx = torch.as_tensor(list(idx))
    labels = torch.as_tensor(gt["labels"])[idx]
    out = torch.empty(len(idx), D, D)
    for k in labels.unique().tolist():
        sel = idx[labels == k]
        out[labels == k] = render_images(vols[k], torch.as_tensor(gt["rotations"])[sel],
                                         torch.as_tensor(gt["shifts"])[sel], gt["ctf"][sel], PX)
    return out


def _stack(path):
    with mrcfile.mmap(path, mode="r") as m:
        return torch.as_tensor(np.array(m.data))


def test_dataset_reads_back_with_exact_ground_truth(tmp_path, states):
    """particles.star read back gives the saved poses, shifts and CTF (to the STAR file's 6 decimals),
    image i of the stack is image i of the STAR, and stack − re-rendered noiseless image (from the
    saved truth) is pure noise of the saved σ (variance within 5 %); with the poses of other images
    the residual is much larger (so the poses really are those of the images)."""
    vols, _ = states
    out = simulate_dataset(tmp_path / "ds", vols, 120, PX, 0.5, shift_std=1.5, shift_max=4.0, seed=1,
                           chunk_size=50, progress=False)
    gt = read_ground_truth(out)
    particles = read_star(out / "particles.star")
    assert len(particles) == 120 and particles.box_size == D and particles.pixel_size == PX
    assert torch.allclose(particles.rotations, torch.as_tensor(gt["rotations"]), atol=1e-5)
    assert torch.allclose(particles.shifts, torch.as_tensor(gt["shifts"]), atol=1e-5)
    for name, v in gt["ctf"].as_dict().items():
        assert torch.allclose(getattr(particles.ctf, name), v, rtol=1e-6, atol=1e-5), name
    assert float(np.abs(gt["shifts"]).max()) > 0 and float(np.linalg.norm(gt["shifts"], axis=1).max()) <= 4.0
    images = read_images(particles, np.arange(120))
    clean = _rerender(gt, vols, range(120))
    sigma = float(gt["noise_sigma"])
    assert float((images - clean).var()) == pytest.approx(sigma ** 2, rel=0.05)
    wrong = _rerender({**gt, "rotations": np.roll(gt["rotations"], 1, axis=0)}, vols, range(120))
    assert float((images - wrong).var()) > sigma ** 2 * 1.5


@pytest.mark.parametrize("snr", [0.05, 1.0])
def test_measured_snr_matches_target(tmp_path, states, snr):
    """SNR measured independently — variance of re-rendered noiseless images over the dataset /
    variance of (stack − noiseless) — is within 10 % of the target; the saved whole-dataset signal
    variance over σ² is too."""
    vols, _ = states
    out = simulate_dataset(tmp_path / "ds", vols[0], 200, PX, snr, seed=2, n_pilot=50, progress=False)
    gt = read_ground_truth(out)
    images = _stack(out / "particles.mrcs")
    clean = _rerender(gt, vols, range(200))
    measured = float(clean.var()) / float((images - clean).var())
    assert measured == pytest.approx(snr, rel=0.10)
    assert float(gt["signal_variance"]) / float(gt["noise_sigma"]) ** 2 == pytest.approx(snr, rel=0.10)
    assert int(gt["n_pilot"]) == 50


def test_populations_and_labels(tmp_path, states):
    """200 images with populations (1, 3): the label counts are within 4 binomial σ of (50, 150); each
    image matches its own state's projection better than the other state's (labels are the truth);
    the atomic models of both states are saved and state values follow the labels."""
    vols, models = states
    out = simulate_dataset(tmp_path / "ds", vols, 200, PX, 10.0, populations=[1, 3], state_values=[0.0, 25.0],
                           state_name="hinge_angle_deg", models=models, seed=3, progress=False)
    gt = read_ground_truth(out)
    counts = np.bincount(gt["labels"], minlength=2)
    assert abs(counts[1] - 150) < 4 * np.sqrt(200 * 0.75 * 0.25)
    assert np.allclose(gt["populations"], [0.25, 0.75])
    assert np.array_equal(gt["hinge_angle_deg"], np.where(gt["labels"] == 1, 25.0, 0.0))
    assert [p.name for p in gt["model_files"]] == ["model_000.pdb", "model_001.pdb"]
    assert np.abs(read_atoms(gt["model_files"][1]).coords - models[1].coords).max() < 1e-3
    images = _stack(out / "particles.mrcs")[:40]
    own = _rerender(gt, vols, range(40))
    other = _rerender({**gt, "labels": 1 - gt["labels"]}, vols, range(40))
    err_own = ((images - own) ** 2).sum((1, 2))
    err_other = ((images - other) ** 2).sum((1, 2))
    assert bool((err_own < err_other).all())
    vol1 = mrcfile.read(gt["volume_files"][1])
    assert np.allclose(vol1, vols[1].numpy())


class _SpyWriter(simds.StackWriter):
    largest = 0

    def write(self, start, images):
        _SpyWriter.largest = max(_SpyWriter.largest, int(images.shape[0]))
        super().write(start, images)


def test_chunked_writing_is_identical_and_chunked(tmp_path, states, monkeypatch):
    """chunk_size 1 (rounded up to one render block of 128 < N) and chunk_size N give bit-identical
    images and ground truth for the same seed; with the small chunks no write hands the stack writer
    more than 128 of the 200 images (the stack is never held whole); another seed gives different
    images."""
    vols, _ = states
    monkeypatch.setattr(simds, "StackWriter", _SpyWriter)
    kw = dict(populations=[1, 1], shift_std=1.0, n_pilot=150, progress=False)
    a = simulate_dataset(tmp_path / "a", vols, 200, PX, 0.1, chunk_size=1, seed=4, **kw)
    assert _SpyWriter.largest == 128
    b = simulate_dataset(tmp_path / "b", vols, 200, PX, 0.1, chunk_size=200, seed=4, **kw)
    assert _SpyWriter.largest == 200
    c = simulate_dataset(tmp_path / "c", vols, 200, PX, 0.1, chunk_size=200, seed=5, **kw)
    assert torch.equal(_stack(a / "particles.mrcs"), _stack(b / "particles.mrcs"))
    ga, gb = read_ground_truth(a), read_ground_truth(b)
    for k in ("rotations", "shifts", "labels", "defocus_u", "noise_sigma", "signal_variance"):
        assert np.array_equal(ga[k], gb[k]), k
    assert not torch.equal(_stack(a / "particles.mrcs"), _stack(c / "particles.mrcs"))


def test_given_poses_and_ctf_are_used(tmp_path):
    """User-given rotations, shifts and CTF are the ones saved and written to the STAR file; with
    SNR = inf the stack equals the forward model's images of them exactly."""
    vol = atoms_to_volume(read_atoms(bundled_model("1hvr")), D, PX)
    g = torch.Generator().manual_seed(9)
    rots = random_rotations(30, generator=g)
    shifts = torch.randn(30, 2, generator=g)
    ctf = CTFParams.create(torch.full((30,), 15000.0), torch.full((30,), 14000.0), 0.3, 200.0, 2.0, 0.07)
    out = simulate_dataset(tmp_path / "ds", vol, 30, PX, float("inf"), rotations=rots, shifts=shifts, ctf=ctf,
                           progress=False)
    gt = read_ground_truth(out)
    assert np.allclose(gt["rotations"], rots.numpy()) and np.allclose(gt["shifts"], shifts.numpy())
    assert np.allclose(gt["voltage"], 200.0) and float(gt["noise_sigma"]) == 0.0
    images = _stack(out / "particles.mrcs")
    expected = render_images(vol, rots, shifts, ctf, PX)
    assert torch.allclose(images, expected, atol=1e-5 * float(expected.abs().max()))
    assert read_star(out / "particles.star").ctf.voltage[0] == 200.0


def test_existing_dataset_and_bad_arguments_are_input_errors(tmp_path, states):
    """A folder that already holds a dataset is not overwritten unless asked; an odd box, a non-positive
    SNR and labels out of range are InputErrors."""
    vols, _ = states
    out = simulate_dataset(tmp_path / "ds", vols[0], 10, PX, 1.0, progress=False)
    before = _stack(out / "particles.mrcs")
    with pytest.raises(InputError, match="already holds"):
        simulate_dataset(out, vols[0], 10, PX, 1.0, seed=7, progress=False)
    assert torch.equal(_stack(out / "particles.mrcs"), before)
    simulate_dataset(out, vols[0], 10, PX, 1.0, seed=7, progress=False, overwrite=True)
    assert not torch.equal(_stack(out / "particles.mrcs"), before)
    with pytest.raises(InputError):
        simulate_dataset(tmp_path / "x", torch.zeros(31, 31, 31), 10, PX, 1.0, progress=False)
    with pytest.raises(InputError):
        simulate_dataset(tmp_path / "x", vols[0], 10, PX, 0.0, progress=False)
    with pytest.raises(InputError):
        simulate_dataset(tmp_path / "x", vols, 10, PX, 1.0, labels=np.full(10, 2), progress=False)


def test_cli_simulate_hinge_in_process(tmp_path, capsys):
    """`cryolens simulate --model 4E43 --motion hinge` writes a complete folder with 3 states along
    the default angles (0, 12.5, 25°) and returns 0; one of its maps as input, resampled to 4 Å/px
    and a 24 px box, gives a dataset of that size; a missing input returns 2 with one line."""
    out = tmp_path / "cli"
    rc = cli_main(["simulate", "--model", "4E43", "--out", str(out), "--n", "40", "--box", str(D), "--apix", str(PX),
                   "--motion", "hinge", "--n-states", "3", "--quiet", "--device", "cpu"])
    assert rc == 0
    gt = read_ground_truth(out)
    assert np.allclose(gt["state_values"], [0.0, 12.5, 25.0])
    assert len(gt["volume_files"]) == 3 and len(gt["model_files"]) == 3
    info = json.loads((out / "ground_truth" / "info.json").read_text())
    assert info["motion"] == "hinge" and info["n_images"] == 40
    assert len(read_star(out / "particles.star")) == 40
    # a map input, resampled to another pixel size and box
    rc = cli_main(["simulate", str(gt["volume_files"][2]), "--out", str(tmp_path / "map"), "--n", "20",
                   "--apix", "4", "--box", "24", "--quiet", "--device", "cpu"])
    assert rc == 0
    particles = read_star(tmp_path / "map" / "particles.star")
    assert particles.box_size == 24 and particles.pixel_size == 4.0
    rc = cli_main(["simulate", str(tmp_path / "missing.pdb"), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "missing.pdb" in err[0]


def test_cli_simulate_select_keeps_only_the_chosen_atoms(tmp_path, capsys):
    """`--select A` simulates one monomer: the saved model holds chain A's atoms only and the saved map
    equals the map of chain A computed here directly (centred on its own centre of mass); a selection
    that matches nothing, or one given with map inputs, returns 2 with one line naming it."""
    out = tmp_path / "mono"
    rc = cli_main(["simulate", "--model", "4E43", "--select", "A", "--out", str(out), "--n", "10", "--box", str(D),
                   "--apix", str(PX), "--quiet", "--device", "cpu"])
    assert rc == 0
    gt = read_ground_truth(out)
    saved = read_atoms(gt["model_files"][0])
    full = read_atoms(bundled_model("4E43"))
    chain_a = full.subset(full.chain_ids == "A")
    assert set(saved.chain_ids) == {"A"} and len(saved) == len(chain_a) < len(full)
    expected = atoms_to_volume(chain_a, D, PX)
    with mrcfile.open(gt["volume_files"][0]) as m:
        got = torch.as_tensor(np.array(m.data))
    assert torch.allclose(got, expected.float(), atol=1e-5 * float(expected.abs().max()))
    assert json.loads((out / "ground_truth" / "info.json").read_text())["select"] == "A"
    rc = cli_main(["simulate", "--model", "4E43", "--select", "Q", "--out", str(tmp_path / "q"), "--n", "10",
                   "--box", str(D), "--apix", str(PX), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "'Q'" in err[0]
    rc = cli_main(["simulate", str(gt["volume_files"][0]), "--select", "A", "--out", str(tmp_path / "m"),
                   "--n", "10", "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--select" in err[0]
