"""The compiled insertion kernel (imaging/native.py) against the pure-torch scatter, a trilinear footing worked
out by hand and a float64 reference; the faster CTF and phase-ramp formulas against direct float64 ones."""

import math
import threading

import numpy as np
import pytest
import torch

from cryolens.imaging import native
from cryolens.imaging.ctf import CTFParams, ctf_from_freqs, electron_wavelength
from cryolens.imaging.rotations import random_rotations
from cryolens.imaging.shift import phase_ramp
from cryolens.imaging.slice import finish_staging, insert_slices, scatter_slices, staging_grid


def test_the_kernel_builds_here():
    """CI and development machines have a C++ compiler: the kernel must build there (else say why)."""
    assert native.library() is not None, native.unavailable_reason()


def _torch_path(monkeypatch, fn, *args, **kw):
    with monkeypatch.context() as m:
        m.setenv("CRYOLENS_NATIVE", "0")
        assert native.library() is None
        return fn(*args, **kw)


@pytest.mark.parametrize("d", [16, 15])
@pytest.mark.parametrize("kind", ["complex-half", "complex-full", "real", "unweighted"])
def test_kernel_equals_the_torch_scatter_in_float64(monkeypatch, d, kind):
    """Same data and weights as the 8 index_add_ of the torch path (float64: to 1e-12), for half and full
    complex slices, real slices and default weights, even and odd boxes."""
    g = torch.Generator().manual_seed(d)
    sl = torch.randn(5, d, d, dtype=torch.complex128, generator=g)
    if kind == "real":
        sl = sl.real.contiguous()
    w = None if kind == "unweighted" else torch.rand(5, d, d, dtype=torch.float64, generator=g)
    rots = random_rotations(5, generator=g, dtype=torch.float64)
    herm = kind == "complex-half"
    ours = insert_slices(sl, rots, 2 * d, weights=w, hermitian=herm)
    ref = _torch_path(monkeypatch, insert_slices, sl, rots, 2 * d, weights=w, hermitian=herm)
    for a, b in zip(ours, ref):
        assert float((a - b).abs().max()) < 1e-12 * float(b.abs().max())


@pytest.mark.parametrize("compiled", ["1", "0"])
def test_one_pixel_lands_on_its_eight_corners_with_hand_computed_weights(monkeypatch, compiled):
    """A single pixel at f = (¼, −⅛) cycles/px (D 8, grid 16) turned by 30° about z, then 20° about x: its
    value times the product of the 1 − t / t weights of the three axes at each of the 8 corners of
    p = R·f·16 + 8 (computed here with numpy), nothing elsewhere."""
    d, padded = 8, 16
    a, b = math.radians(30), math.radians(20)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    r = rx @ rz
    sl = torch.zeros(1, d, d, dtype=torch.complex128)
    sl[0, 3, 6] = 2.0 - 1.0j  # row y = 3 → ky = −1/8, column x = 6 → kx = +1/4
    w = (sl != 0).double()  # the default weight is 1 at every pixel: here only at this one
    st = staging_grid(padded, 3, dtype=torch.float64)
    monkeypatch.setenv("CRYOLENS_NATIVE", compiled)  # the kernel, then the torch path
    scatter_slices(st, sl, torch.from_numpy(r)[None], padded, w)
    p = r @ np.array([0.25, -0.125, 0.0]) * padded + padded // 2
    base = np.floor(p).astype(int)
    t = p - base
    expect = np.zeros((3, padded + 2, padded + 2, padded + 2))
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                wgt = (t[2] if dz else 1 - t[2]) * (t[1] if dy else 1 - t[1]) * (t[0] if dx else 1 - t[0])
                expect[:, base[2] + dz, base[1] + dy, base[0] + dx] = [2.0 * wgt, -1.0 * wgt, wgt]
    np.testing.assert_allclose(st.reshape(expect.shape).numpy(), expect, atol=1e-14)


def test_float32_kernel_is_within_float32_rounding_of_float64():
    """In float32 the kernel's sums stay within 1e-5 of the float64 insertion (the geometry is computed in
    float64), closer than the torch path, whose slice coordinates are float32."""
    g = torch.Generator().manual_seed(2)
    d = 24
    sl = torch.randn(40, d, d, dtype=torch.complex128, generator=g)
    w = torch.rand(40, d, d, dtype=torch.float64, generator=g)
    rots = random_rotations(40, generator=g, dtype=torch.float64)
    ref = insert_slices(sl, rots, 2 * d, weights=w, hermitian=True)
    got = insert_slices(sl.to(torch.complex64), rots.float(), 2 * d, weights=w.float(), hermitian=True)
    for a, b in zip(got, ref):
        assert float((a.to(b.dtype) - b).norm() / b.norm()) < 1e-5


def test_two_threads_filling_two_grids_give_the_sequential_sums():
    """The kernel releases the GIL: two grids filled from two threads at once equal the same calls in turn."""
    g = torch.Generator().manual_seed(5)
    d = 16
    stacks = [torch.randn(30, d, d, dtype=torch.complex64, generator=g) for _ in range(2)]
    rots = [random_rotations(30, generator=g) for _ in range(2)]
    seq = [staging_grid(2 * d, 3) for _ in range(2)]
    par = [staging_grid(2 * d, 3) for _ in range(2)]
    for k in range(2):
        for a in range(0, 30, 10):
            scatter_slices(seq[k], stacks[k][a:a + 10], rots[k][a:a + 10], 2 * d, hermitian=True)

    def fill(k):
        for a in range(0, 30, 10):
            scatter_slices(par[k], stacks[k][a:a + 10], rots[k][a:a + 10], 2 * d, hermitian=True)

    threads = [threading.Thread(target=fill, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(par, seq):
        assert torch.equal(finish_staging(a, 2 * d)[0], finish_staging(b, 2 * d)[0])


def test_without_a_compiler_the_torch_scatter_is_used(monkeypatch, tmp_path):
    """No compiler: a warning, ``library()`` None and the same insertion from the torch path; with one, the
    library is built into ``$CRYOLENS_CACHE/kernels`` once and reused."""
    monkeypatch.setattr(native, "_STATE", {})
    monkeypatch.setattr(native, "_compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match="no C.. compiler"):
        assert native.library() is None
    assert "compiler" in native.unavailable_reason()
    sl = torch.randn(3, 8, 8, dtype=torch.complex64)
    data, weight = insert_slices(sl, random_rotations(3), 16, hermitian=True)
    assert float(weight.sum()) > 0
    monkeypatch.undo()
    monkeypatch.setenv("CRYOLENS_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_STATE", {})
    assert native.library() is not None
    built = list((tmp_path / "kernels").glob("scatter-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_STATE", {})
    assert native.library() is not None and built[0].stat().st_mtime_ns == stamp


def _ctf_direct(k, du, dv, ang, kv, cs, q0, phase, bfac):
    """RELION's CTF with the per-pixel angle, numpy float64: k ``(…, 2)`` 1/Å."""
    lam = 12.2643247 / np.sqrt(kv * 1e3 * (1 + 0.978466e-6 * kv * 1e3))
    s2 = (k ** 2).sum(-1)
    dfz = (du + dv) / 2 + (du - dv) / 2 * np.cos(2 * (np.arctan2(k[..., 1], k[..., 0]) - ang))
    chi = np.pi * lam * dfz * s2 - np.pi / 2 * cs * 1e7 * lam ** 3 * s2 ** 2 + phase + np.arcsin(q0)
    return np.sin(chi) * np.exp(-bfac * s2 / 4)


def test_ctf_per_image_frequencies_match_the_per_pixel_angle_formula():
    """Frequencies of their own per image (e.g. each image at its own pixel size), astigmatism at several
    angles, phase shifts and B-factors: the matrix-product phase equals the atan2/cos form to 1e-9."""
    g = np.random.default_rng(0)
    n = 4
    du, dv = g.uniform(8000, 25000, n), g.uniform(8000, 25000, n)
    ang, ph, bf = g.uniform(-3, 3, n), g.uniform(0, 1.5, n), np.array([0.0, 10.0, 0.0, 80.0])
    a = (np.arange(16) - 8) / 16
    ky, kx = np.meshgrid(a, a, indexing="ij")
    apix = np.array([1.0, 1.3, 2.1, 0.9])
    k = np.stack([kx, ky], -1)[None] / apix[:, None, None, None]  # (n, 16, 16, 2)
    params = CTFParams.create(du, dv, ang, 200.0, 2.0, 0.07, ph, bf, dtype=torch.float64)
    ours = ctf_from_freqs(torch.from_numpy(k), params, per_image=True).numpy()
    ref = np.stack([_ctf_direct(k[i], du[i], dv[i], ang[i], 200.0, 2.0, 0.07, ph[i], bf[i]) for i in range(n)])
    assert np.abs(ours - ref).max() < 1e-9
    assert float(electron_wavelength(200.0)) == pytest.approx(0.02508, abs=1e-5)


@pytest.mark.parametrize("d", [12, 13])
def test_phase_ramp_equals_the_direct_exponential(d):
    """The separable ramp ``exp(−2πi ky sy)·exp(−2πi kx sx)`` equals ``exp(−2πi k·s)`` (numpy, float64)."""
    s = np.array([[1.25, -2.5], [0.3, 0.0], [-3.7, 2.2]])
    k = (np.arange(d) - d // 2) / d
    ky, kx = np.meshgrid(k, k, indexing="ij")
    ref = np.exp(-2j * np.pi * (kx[None] * s[:, 0, None, None] + ky[None] * s[:, 1, None, None]))
    ours = phase_ramp(torch.from_numpy(s), d).numpy()
    assert np.abs(ours - ref).max() < 1e-12


def test_accumulator_sums_kept_voxel_major_equal_the_staging_path(monkeypatch):
    """FourierAccumulator.add keeps the kernel's sums voxel-major and folds them into ``staging`` when read: the
    same staging, completed data and weights as the torch path (float64, 1e-12), also after more images are added
    to a grid already read, and through ``merged``."""
    from cryolens.inference.reconstruct import FourierAccumulator

    g = torch.Generator().manual_seed(7)
    d = 12
    batches = [(torch.randn(6, d, d, dtype=torch.complex128, generator=g), random_rotations(6, generator=g,
                dtype=torch.float64), torch.rand(6, d, d, dtype=torch.float64, generator=g)) for _ in range(3)]

    def fill(compiled: str) -> tuple[FourierAccumulator, FourierAccumulator, bool]:
        monkeypatch.setenv("CRYOLENS_NATIVE", compiled)
        a, b = (FourierAccumulator(d, 2, torch.device("cpu"), torch.float64) for _ in range(2))
        a.add(*batches[0])
        a.add(*batches[1])
        pending = a._voxel_major is not None
        _ = a.staging  # read in between: the pending sums are folded in, then more come
        a.add(*batches[2], scale=torch.full((6,), 0.5, dtype=torch.float64))
        b.add(*batches[1])
        return a, a.merged(b), pending

    ours, ref = fill("1"), fill("0")
    assert ours[2] and not ref[2]  # the compiled path kept its sums voxel-major until read, the torch path not
    for a, b in zip(ours[:2], ref[:2]):
        for x, y in ((a.staging, b.staging), (a.data, b.data), (a.weight, b.weight)):
            assert float((x - y).abs().max()) < 1e-12 * float(y.abs().max())
