"""Simulated datasets with ground truth, written as a normal dataset folder.

``simulate_dataset`` draws each image's state, pose, shift and CTF, renders the noiseless
CTF-modulated projection with the one forward model
(:func:`cryolens.imaging.forward.render_images`), adds white Gaussian noise at the target SNR and
writes, into ``out_dir``::

    particles.mrcs           the noisy images (N, D, D) float32, written chunk by chunk
    particles.star           RELION 3.1 (data_optics + data_particles): poses, shifts, CTF
    ground_truth/volume_000.mrc ...   the maps of the K states (voxel size set)
    ground_truth/model_000.pdb ...    the atomic models they were computed from, when any
    ground_truth/ground_truth.npz     per-image truth (see :func:`simulate_dataset`)
    ground_truth/info.json            the settings and summary numbers, for people

SNR (docs/CONVENTIONS.md) = variance of the noiseless CTF-modulated images over the whole dataset /
noise variance. The signal variance is estimated first on a pilot pass over a random subset of
``n_pilot`` images (1,000 by default, or all of them when fewer); the noise σ follows from it.
The variance of the whole noiseless dataset is measured again while writing and saved
(``signal_variance``), so the realised SNR is known exactly.

Reproducible: every random quantity has its own generator derived from ``seed`` (labels, poses,
shifts, CTF, pilot subset), and each image's noise its own (``seed``, image index) stream, so the
output does not depend on which other quantities were given. Images are rendered in fixed blocks
of 128 (the forward model's rounding can depend on the batch), so a dataset is the same bit for bit
whatever ``chunk_size``. Renders on ``device``; the noise is drawn on the CPU, so datasets made on
different devices differ only by the rounding of the forward model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..imaging.ctf import CTFParams
from ..imaging.forward import render_images
from ..imaging.rotations import random_rotations
from ..imaging.slice import prepare_volume_ft
from ..io.atomic import Atoms, write_atoms
from ..io.files import atomic_path, atomic_write_text
from ..io.mrc import StackWriter, write_volume
from ..io.particles import Particles
from ..io.star import write_star
from .density import atoms_extent, atoms_to_volume
from .motion import sample_states
from .nuisance import _generator, image_noise, random_ctf, random_shifts  # noqa: F401  (public from here too)

log = logging.getLogger(__name__)

_BLOCK = 128  # images rendered together; chunks are whole blocks, so the output is chunk-independent

_RESERVED = {"rotations", "shifts", "labels", "populations", "state_values", "snr", "noise_sigma",
             "signal_variance_pilot", "signal_variance", "n_pilot", "pixel_size", "box_size", "seed", "defocus_u",
             "defocus_v", "defocus_angle_deg", "phase_shift_deg", "voltage", "cs", "amplitude_contrast",
             "ctf_bfactor"}

def volumes_from_models(models: Sequence[Atoms], box: int, pixel_size: float,
                        center: Sequence[float] | np.ndarray | None = None, blur: float | None = None,
                        use_bfactors: bool = False, device: torch.device | str | None = None) -> torch.Tensor:
    """``(K, D, D, D)`` maps of ``K`` models in one frame: every model is centred on ``center``
    (default the first model's centre of mass), so a motion is not undone by re-centring. Logs a
    warning when atoms come within 2 Å of the box edge (their density is cut)."""
    if not models:
        raise InputError("no atomic model given")
    centre = models[0].center_of_mass() if center is None else np.asarray(center, dtype=np.float64)
    half = box * pixel_size / 2
    vols = []
    for m in models:
        ext = atoms_extent(m, centre)
        if ext > half - 2.0:
            log.warning("%s: atoms reach %.1f Å from the centre but the box (%d × %.3g Å) holds %.1f Å; "
                        "the map is cut at the edge (use a larger --box or --apix)",
                        m.source or "model", ext, box, pixel_size, half)
        vols.append(atoms_to_volume(m, box, pixel_size, centre, blur, use_bfactors, device=device))
    return torch.stack(vols)


class _VolumeFTs:
    """Oversampled transforms of the ``K`` volumes, kept while they fit in ``max_bytes`` (else
    made again when needed)."""

    def __init__(self, volumes: torch.Tensor, pad: int = 2, max_bytes: int = 2 ** 31):
        self.volumes, self.pad = volumes, pad
        d = volumes.shape[-1]
        per = (pad * d) ** 3 * (16 if volumes.dtype == torch.float64 else 8) * 2  # transform + sampling copy
        self.capacity = max(1, max_bytes // per)
        self.cache: dict[int, torch.Tensor] = {}

    def __getitem__(self, k: int) -> torch.Tensor:
        if k not in self.cache:
            if len(self.cache) >= self.capacity:
                self.cache.pop(next(iter(self.cache)))
            self.cache[k] = prepare_volume_ft(self.volumes[k], pad=self.pad)
        return self.cache[k]


def _render(fts: _VolumeFTs, labels: torch.Tensor, rotations: torch.Tensor, shifts: torch.Tensor,
            ctf: CTFParams | None, pixel_size: float, device: torch.device) -> torch.Tensor:
    """Noiseless images ``(B, D, D)`` for one chunk, rendered state by state."""
    d = fts.volumes.shape[-1]
    out = torch.empty((labels.shape[0], d, d), dtype=torch.float32, device=device)
    for k in torch.unique(labels).tolist():
        sel = torch.nonzero(labels == k).reshape(-1)
        c = None if ctf is None else ctf[sel].to(device)
        out[sel.to(device)] = render_images(fts.volumes[k], rotations[sel].to(device), shifts[sel].to(device), c,
                                            pixel_size, volume_ft=fts[k]).float()
    return out


def _variance(sums: np.ndarray, sums_sq: np.ndarray, d: int) -> float:
    """Pixel variance over a set of ``D × D`` images from their per-image sums and sums of squares."""
    count = sums.shape[0] * d * d
    mean = float(np.sum(sums)) / count
    return float(np.sum(sums_sq)) / count - mean * mean


def _as_volumes(volumes) -> torch.Tensor:
    if isinstance(volumes, (list, tuple)):
        vols = [torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v) for v in volumes]
        if not vols:
            raise InputError("no volume given")
        shapes = {tuple(v.shape) for v in vols}
        if len(shapes) != 1:
            raise InputError(f"the volumes have different shapes {sorted(shapes)}; they must share one box")
        vols = torch.stack([v.to(vols[0].device) for v in vols])
    else:
        vols = torch.as_tensor(np.asarray(volumes) if not isinstance(volumes, torch.Tensor) else volumes)
        if vols.dim() == 3:
            vols = vols[None]
    if vols.dim() != 4 or not (vols.shape[1] == vols.shape[2] == vols.shape[3]):
        raise InputError(f"volumes of shape {tuple(vols.shape)}: expected cubes (D, D, D) or (K, D, D, D)")
    if vols.shape[-1] % 2:
        raise InputError(f"box size {vols.shape[-1]} is odd; cryolens needs an even box")
    if not bool(torch.isfinite(vols).all()):
        raise InputError("a volume holds NaN or infinite values")
    return vols.float()


def _prepare_out(out_dir: Path, overwrite: bool) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    if (out_dir / "particles.star").exists() and not overwrite:
        raise InputError(f"{out_dir}: already holds a dataset (particles.star); choose another folder "
                         "or overwrite it (--force)")
    gt = out_dir / "ground_truth"
    gt.mkdir(parents=True, exist_ok=True)
    if overwrite:  # the old STAR goes first: an interrupted run never leaves it beside new images
        for old in [out_dir / "particles.star"] + list(gt.glob("volume_*.mrc")) + list(gt.glob("model_*.pdb")):
            if not old.exists():
                continue
            old.unlink()
    return gt


def simulate_dataset(out_dir: str | os.PathLike, volumes, n_images: int, pixel_size: float, snr: float, *,
                     populations: Sequence[float] | None = None, labels: Sequence[int] | np.ndarray | None = None,
                     state_values: Sequence[float] | None = None, state_name: str = "conformation",
                     rotations: torch.Tensor | None = None, shifts: torch.Tensor | None = None,
                     shift_std: float = 0.0, shift_max: float | None = None,
                     ctf: CTFParams | None = None, defocus_range: tuple[float, float] | None = (10000.0, 25000.0),
                     astigmatism: float = 500.0, voltage: float = 300.0, cs: float = 2.7,
                     amplitude_contrast: float = 0.1, ctf_bfactor: float = 0.0,
                     models: Sequence[Atoms] | None = None, seed: int = 0, chunk_size: int = 1000,
                     n_pilot: int = 1000, device: torch.device | str | None = None, progress: bool = True,
                     overwrite: bool = False, notes: dict | None = None) -> Path:
    """Simulate ``n_images`` particle images of ``volumes`` and write a dataset folder (module
    docstring). Returns ``out_dir``.

    volumes: ``(D, D, D)`` or ``K`` of them (list or ``(K, D, D, D)``), ``[z, y, x]``, in one frame,
    of ``pixel_size`` Å/px; ``D`` even. snr: target signal variance / noise variance (> 0), or
    ``inf`` for noiseless images.
    State of each image: ``labels`` ``(N,)`` ints in ``[0, K)`` if given, else drawn with
    ``populations`` ``(K,)`` (default uniform). state_values: ``(K,)`` continuous coordinate of each
    state (e.g. a hinge angle in degrees), saved per image as ``state_name``.
    Poses: ``rotations`` ``(N, 3, 3)`` (image → volume frame) if given, else uniform on SO(3).
    Shifts: ``shifts`` ``(N, 2)`` px if given, else Gaussian of per-axis ``shift_std`` px truncated
    to ``|s| ≤ shift_max``. CTF: ``ctf`` if given, else :func:`random_ctf` with ``defocus_range``
    (Å), ``astigmatism`` (Å), ``voltage`` (kV), ``cs`` (mm), ``amplitude_contrast``, ``ctf_bfactor``
    (Å²); ``defocus_range=None`` simulates without a CTF.
    models: the atomic models the volumes came from (written as ``ground_truth/model_k.pdb``).
    chunk_size: images rendered and written at a time (memory ∝ chunk_size · D²), rounded up to a
    multiple of 128 (the render block).
    n_pilot: images of the pilot pass that sets the noise level (a random subset).
    device: where to render (default: the volumes' device).

    ``ground_truth/ground_truth.npz`` holds: ``rotations`` (N, 3, 3), ``shifts`` (N, 2) px,
    ``defocus_u``, ``defocus_v`` (Å), ``defocus_angle_deg``, ``phase_shift_deg``, ``voltage`` (kV),
    ``cs`` (mm), ``amplitude_contrast``, ``ctf_bfactor`` (Å²) (CTF keys absent without a CTF),
    ``labels`` (N,) state index, ``populations`` (K,), ``state_values`` (K,) and ``state_name``
    (N,) when given, ``snr``, ``noise_sigma``, ``signal_variance_pilot``, ``signal_variance``
    (whole dataset), ``n_pilot``, ``pixel_size``, ``box_size``, ``seed``.
    """
    out = Path(out_dir)
    vols = _as_volumes(volumes)
    k_states, d = vols.shape[0], vols.shape[-1]
    n = int(n_images)
    if n <= 0:
        raise InputError(f"number of images {n_images}: must be positive")
    if not (snr > 0):
        raise InputError(f"SNR {snr}: must be positive")
    if not pixel_size > 0:
        raise InputError(f"pixel size {pixel_size} Å: must be positive")
    if chunk_size <= 0 or n_pilot <= 0:
        raise InputError(f"chunk size {chunk_size} / pilot size {n_pilot}: must be positive")
    dev = torch.device(device) if device is not None else vols.device
    vols = vols.to(dev)

    # --- the hidden variables of every image (all small: N × 16 numbers) ---
    if labels is not None:
        lab = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
        if lab.shape != (n,) or (n and (int(lab.min()) < 0 or int(lab.max()) >= k_states)):
            raise InputError(f"labels: need {n} state indices in 0..{k_states - 1}")
        pops = np.bincount(lab.numpy(), minlength=k_states) / n
    else:
        pops = np.full(k_states, 1.0 / k_states) if populations is None else np.asarray(populations, dtype=np.float64)
        if pops.shape != (k_states,):
            raise InputError(f"populations: {pops.size} values for {k_states} states")
        lab = sample_states(n, pops, _generator(seed, "labels"))
        pops = pops / pops.sum()
    if state_values is not None:
        state_values = np.asarray(state_values, dtype=np.float64).reshape(-1)
        if state_values.shape != (k_states,):
            raise InputError(f"state values: {state_values.size} values for {k_states} states")
        if state_name in _RESERVED:
            raise InputError(f"state name {state_name!r} is a ground-truth key already; choose another")
    if models is not None and len(models) != k_states:
        raise InputError(f"{len(models)} atomic models for {k_states} volumes")
    if rotations is None:
        rots = random_rotations(n, generator=_generator(seed, "rotations"))
    else:
        rots = torch.as_tensor(rotations, dtype=torch.float32).detach().cpu()
        if rots.shape != (n, 3, 3):
            raise InputError(f"rotations of shape {tuple(rots.shape)}: expected ({n}, 3, 3)")
    if shifts is None:
        sh = random_shifts(n, shift_std, shift_max, _generator(seed, "shifts"))
    else:
        sh = torch.as_tensor(shifts, dtype=torch.float32).detach().cpu()
        if sh.shape != (n, 2):
            raise InputError(f"shifts of shape {tuple(sh.shape)}: expected ({n}, 2)")
    if ctf is not None:
        ctf_p = ctf.to(device="cpu", dtype=torch.float32)
        if len(ctf_p) != n:
            raise InputError(f"CTF parameters for {len(ctf_p)} images, expected {n}")
    elif defocus_range is not None:
        ctf_p = random_ctf(n, defocus_range, astigmatism, voltage, cs, amplitude_contrast, ctf_bfactor,
                           _generator(seed, "ctf"))
    else:
        ctf_p = None

    gt = _prepare_out(out, overwrite)
    fts = _VolumeFTs(vols)

    def chunk(idx: torch.Tensor) -> torch.Tensor:
        """Noiseless images of ``idx`` (block-aligned), rendered block by block."""
        parts = []
        for b in range(0, len(idx), _BLOCK):
            i = idx[b:b + _BLOCK]
            parts.append(_render(fts, lab[i], rots[i], sh[i], None if ctf_p is None else ctf_p[i], pixel_size, dev))
        return torch.cat(parts)

    step = -(-int(chunk_size) // _BLOCK) * _BLOCK

    # --- pilot pass: the signal variance that sets σ ---
    m = min(n, int(n_pilot))
    pilot = torch.sort(torch.randperm(n, generator=_generator(seed, "pilot"))[:m]).values
    # per-image sums, added up at the end: the result does not depend on the chunking
    p1, p2 = np.zeros(m), np.zeros(m)
    with tqdm(total=m, desc="pilot (signal variance)", unit="img", disable=not progress, leave=False) as bar:
        for s in range(0, m, step):
            img = chunk(pilot[s:s + step]).double()
            p1[s:s + img.shape[0]] = img.sum((1, 2)).cpu().numpy()
            p2[s:s + img.shape[0]] = (img * img).sum((1, 2)).cpu().numpy()
            bar.update(img.shape[0])
    var_pilot = _variance(p1, p2, d)
    if not var_pilot > 0:
        raise InputError("the noiseless images are blank (zero variance): is the volume empty or off-centre?")
    sigma = 0.0 if math.isinf(snr) else math.sqrt(var_pilot / snr)

    # --- ground-truth maps and models ---
    for k in range(k_states):
        write_volume(gt / f"volume_{k:03d}.mrc", vols[k].cpu(), pixel_size)
    if models is not None:
        for k, mdl in enumerate(models):
            write_atoms(gt / f"model_{k:03d}.pdb", mdl)

    # --- writing pass ---
    stack = out / "particles.mrcs"
    t1, t2 = np.zeros(n), np.zeros(n)
    with StackWriter(stack, n, d, pixel_size) as writer, \
            tqdm(total=n, desc="simulate", unit="img", disable=not progress) as bar:
        for s in range(0, n, step):
            idx = torch.arange(s, min(n, s + step))
            img = chunk(idx).cpu()
            i64 = img.double()
            t1[s:s + len(idx)] = i64.sum((1, 2)).numpy()
            t2[s:s + len(idx)] = (i64 * i64).sum((1, 2)).numpy()
            if sigma > 0:
                img = img + torch.from_numpy(image_noise(seed, idx.tolist(), d, sigma))
            writer.write(s, img)
            bar.update(len(idx))
    var_all = _variance(t1, t2, d)

    # --- per-image truth ---
    arrays: dict[str, np.ndarray] = {
        "rotations": rots.numpy().astype(np.float32), "shifts": sh.numpy().astype(np.float32),
        "labels": lab.numpy().astype(np.int64), "populations": np.asarray(pops, dtype=np.float64),
        "snr": np.float64(snr), "noise_sigma": np.float64(sigma), "signal_variance_pilot": np.float64(var_pilot),
        "signal_variance": np.float64(var_all), "n_pilot": np.int64(m), "pixel_size": np.float64(pixel_size),
        "box_size": np.int64(d), "seed": np.int64(seed),
    }
    if ctf_p is not None:
        arrays.update(defocus_u=ctf_p.defocus_u.numpy(), defocus_v=ctf_p.defocus_v.numpy(),
                      defocus_angle_deg=np.rad2deg(ctf_p.defocus_angle.double().numpy()),
                      phase_shift_deg=np.rad2deg(ctf_p.phase_shift.double().numpy()),
                      voltage=ctf_p.voltage.numpy(), cs=ctf_p.cs.numpy(),
                      amplitude_contrast=ctf_p.amplitude_contrast.numpy(), ctf_bfactor=ctf_p.bfactor.numpy())
    if state_values is not None:
        arrays["state_values"] = state_values
        arrays[state_name] = state_values[lab.numpy()]
    with atomic_path(gt / "ground_truth.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    info = {
        "n_images": n, "box_size": d, "pixel_size": pixel_size, "snr": snr if math.isfinite(snr) else "inf",
        "noise_sigma": sigma, "signal_variance_pilot": var_pilot, "signal_variance": var_all,
        "realised_snr": var_all / sigma ** 2 if sigma > 0 else None, "n_pilot": m, "n_states": k_states,
        "populations": [float(p) for p in pops],
        "state_values": None if state_values is None else state_values.tolist(), "state_name": state_name,
        "seed": seed, "shift_std": shift_std, "shift_max": shift_max,
        "ctf": None if ctf_p is None else ("given" if ctf is not None else {
            "defocus_range_A": list(defocus_range), "astigmatism_A": astigmatism, "voltage_kV": voltage,
            "cs_mm": cs, "amplitude_contrast": amplitude_contrast, "bfactor_A2": ctf_bfactor}),
        "poses": "given" if rotations is not None else "uniform on SO(3)",
        "volumes": [f"volume_{k:03d}.mrc" for k in range(k_states)],
        "models": None if models is None else [f"model_{k:03d}.pdb" for k in range(k_states)],
        "device": str(dev), "platform": platform.platform(), **(notes or {}),
    }
    atomic_write_text(gt / "info.json", json.dumps(info, indent=2) + "\n")

    # --- the metadata last: its presence marks a complete dataset ---
    particles = Particles(pixel_size=pixel_size, box_size=d, image_files=[str(stack.resolve())],
                          image_file_index=np.zeros(n, dtype=np.int64), image_index=np.arange(n),
                          rotations=rots, shifts=sh, ctf=ctf_p)
    write_star(out / "particles.star", particles)
    return out


def read_ground_truth(dataset_dir: str | os.PathLike) -> dict:
    """The ground truth of a simulated dataset folder: the arrays of ``ground_truth.npz`` (numpy),
    plus ``"ctf"`` (:class:`CTFParams`, radians, or None), ``"volume_files"`` and ``"model_files"``
    (sorted paths)."""
    gt = Path(dataset_dir) / "ground_truth"
    path = gt / "ground_truth.npz"
    if not path.is_file():
        raise InputError(f"{path}: not found (not a dataset written by cryolens simulate?)")
    try:
        with np.load(path) as z:
            out: dict = {k: z[k] for k in z.files}
    except Exception as e:
        raise InputError(f"{path}: not a readable .npz file ({' '.join(str(e).split())})") from None
    out["ctf"] = None
    if "defocus_u" in out:
        out["ctf"] = CTFParams.create(out["defocus_u"], out["defocus_v"], np.deg2rad(out["defocus_angle_deg"]),
                                      out["voltage"], out["cs"], out["amplitude_contrast"],
                                      np.deg2rad(out["phase_shift_deg"]), out["ctf_bfactor"])
    out["volume_files"] = sorted(gt.glob("volume_*.mrc"))
    out["model_files"] = sorted(gt.glob("model_*.pdb"))
    return out
