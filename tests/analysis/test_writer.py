"""The one run-folder writer (:func:`cryolens.analysis.writer.write_run`) on hand-made outputs: every
field of ``MethodOutputs`` lands in its file, with the names the CLI and the benchmark use."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cryolens.analysis.writer import write_run
from cryolens.io.mrc import read_volume
from cryolens.io.star import read_star
from cryolens.methods.registry import MethodOutputs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "methods"))
from _drgn_data import blob_dataset  # noqa: E402

N, D = 12, 16


@pytest.fixture
def particles(tmp_path):
    return blob_dataset(tmp_path, N, D)[0]


def _outputs(particles) -> MethodOutputs:
    g = torch.Generator().manual_seed(0)
    vols = torch.rand(2, D, D, D, generator=g)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, N)
    history = [{"iteration": i + 1, "resolution_A": 20.0 - i, "class_prior": [0.5, 0.5],
                "log_likelihood": -100.0 + i} for i in range(3)]
    history += [{"stage": "abinit", "iteration": i + 1, "resolution_A": 30.0 - i, "mean_max_weight": 0.5}
                for i in range(2)]
    return MethodOutputs(pixel_size=particles.pixel_size, volumes=vols, labels=labels,
                         rotations=particles.rotations.clone(), shifts=particles.shifts.clone(),
                         latents=rng.normal(size=(N, 2)).astype(np.float32), half_labels=np.arange(N) % 2,
                         extra_volumes={"abinit_class_001": vols[0], "sub/extra": vols[1]},
                         particle_columns={"rlnMaxValueProbDistribution": np.linspace(0, 1, N)},
                         metrics={"class_prior": [0.5, 0.5]}, history=history)


def test_every_output_field_is_written(particles, tmp_path):
    """Class maps (1-based), extra maps (also in a sub-folder), STAR columns (poses, class, half,
    latents, extra column), z.npy, metrics (counts, history split by stage) and the history plots."""
    out = _outputs(particles)
    m = write_run(out, particles, tmp_path / "run", report=True, title="t")
    run = tmp_path / "run"
    for name in ("class_001.mrc", "class_002.mrc", "abinit_class_001.mrc", "sub/extra.mrc", "particles.star",
                 "z.npy", "metrics.json", "class_sections.png", "class_populations.png", "resolution.png",
                 "log_likelihood.png", "abinit_resolution.png", "abinit_posterior.png", "particles.png",
                 "angular_distribution.png", "report.html"):
        assert (run / name).is_file(), name
    assert not (run / "map.mrc").exists()
    vol, px = read_volume(run / "class_002.mrc")
    assert np.allclose(vol, out.volumes[1].numpy()) and px == pytest.approx(particles.pixel_size)
    back = read_star(run / "particles.star")
    assert torch.allclose(back.rotations, out.rotations, atol=1e-5)
    assert np.array_equal(np.asarray(back.extra["rlnClassNumber"]).astype(int), out.labels + 1)
    assert np.array_equal(np.asarray(back.extra["rlnRandomSubset"]).astype(int), out.half_labels + 1)
    assert np.allclose(back.extra["rlnCryolensLatent2"], out.latents[:, 1], atol=1e-5)
    assert np.allclose(back.extra["rlnMaxValueProbDistribution"], np.linspace(0, 1, N), atol=1e-5)
    assert np.array_equal(np.load(run / "z.npy"), out.latents)
    disk = json.loads((run / "metrics.json").read_text())
    assert disk == json.loads(json.dumps(m))
    assert disk["class_counts"] == np.bincount(out.labels, minlength=2).tolist() and disk["n_classes"] == 2
    assert len(disk["history"]) == 3 and len(disk["abinit_history"]) == 2 and disk["iterations"] == 3
    assert disk["n_half1"] == disk["n_half2"] == N // 2 and disk["n_images"] == N


def test_half_maps_give_fsc_and_reference_metrics(particles, tmp_path):
    """With a map, half maps and a reference: map.mrc / half1 / half2, the half-map FSC computed when
    the recipe did not report it (1 at every shell for identical halves), the FSC against the
    reference (1 for the map itself), caller metrics on top, and no report when asked for none."""
    v = torch.rand(D, D, D, generator=torch.Generator().manual_seed(1))
    out = MethodOutputs(pixel_size=particles.pixel_size, volume=v, half_maps=(v, v.clone()))
    m = write_run(out, particles, tmp_path / "run", reference=v, report=False, metrics={"score": 3})
    run = tmp_path / "run"
    for name in ("map.mrc", "half1.mrc", "half2.mrc", "fsc.png", "sections.png", "metrics.json"):
        assert (run / name).is_file(), name
    assert not (run / "report.html").exists() and not (run / "particles.star").exists()
    assert np.allclose(m["fsc_halfmaps"], 1.0, atol=1e-5) and np.allclose(m["fsc_vs_ground_truth"], 1.0, atol=1e-5)
    assert m["score"] == 3 and m["resolution_halfmap_0143_A"] == pytest.approx(2 * particles.pixel_size, rel=0.2)


def test_particle_mosaic_places_each_tile():
    """particles.png's picture: particle i's grey tile at column block i of the top row (the last array rows,
    shown on top with origin "lower"), its CTF below on RdBu_r over −1 … 1, white gaps between."""
    import matplotlib
    import numpy as np

    from cryolens.analysis.plots import particle_mosaic

    rng = np.random.default_rng(0)
    images, ctfs = rng.normal(size=(3, 16, 16)), np.tanh(rng.normal(size=(3, 16, 16)))
    mosaic, gap = particle_mosaic(images, ctfs)
    assert gap == 1 and mosaic.shape == (2 * 16 + 1, 3 * 16 + 2, 3)
    for i in range(3):
        x0 = i * 17
        im = images[i]
        grey = matplotlib.colormaps["gray"]((im - im.min()) / (im.max() - im.min()))[..., :3]
        assert np.allclose(mosaic[17:, x0:x0 + 16], grey)
        assert np.allclose(mosaic[:16, x0:x0 + 16], matplotlib.colormaps["RdBu_r"]((ctfs[i] + 1) / 2)[..., :3])
    assert np.all(mosaic[16] == 1) and np.all(mosaic[:, 16] == 1)
