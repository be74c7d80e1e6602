"""Thin wrappers that run RELION 3.1 programs (the outside reference) on arrays.

Each wrapper writes its inputs (MRC maps / stacks, a STAR 3.1 file with a data_optics table) into a
working folder, runs one RELION program there with ``subprocess`` and returns numpy arrays. The
folder is temporary unless ``workdir`` is given (then the files are left for inspection). RELION
resolves ``rlnImageName`` paths from the folder it runs in, so every program runs inside that folder.

Everything is in RELION's own conventions and units — that is the point: the tests convert
cryolens' conventions to RELION's and compare. Angles are RELION's ``(rlnAngleRot, rlnAngleTilt,
rlnAnglePsi)`` in degrees (``R = Rz(rot) Ry(tilt) Rz(psi)`` in cryolens), origins
``rlnOrigin{X,Y}Angst`` in Å (cryolens ``shift = −origin / pixel_size``), CTF columns are named by
their RELION labels (``rlnDefocusU``, ``rlnDefocusV``, ``rlnDefocusAngle``, ``rlnPhaseShift``, ...).

A missing program raises :class:`RelionNotFound`; a program that fails raises :class:`RelionError`
with the end of its output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from ..io.mrc import open_stack, read_volume, write_stack, write_volume

INSTALL_HINT = "install Debian's relion: apt-get install -y --no-install-recommends relion"
PROGRAMS = ("relion_project", "relion_reconstruct", "relion_image_handler")


class RelionNotFound(RuntimeError):
    """A RELION program is not on ``PATH``."""


class RelionError(RuntimeError):
    """A RELION program exited with an error; the message holds its command and output tail."""


def relion_program(name: str) -> str:
    """Absolute path of RELION program ``name``; raises :class:`RelionNotFound` with an install hint."""
    path = shutil.which(name)
    if path is None:
        raise RelionNotFound(f"{name} not found on PATH ({INSTALL_HINT})")
    return path


def missing_programs(names: Sequence[str] = PROGRAMS) -> list[str]:
    """The programs of ``names`` that are not on ``PATH`` (empty when RELION is installed)."""
    return [n for n in names if shutil.which(n) is None]


def run_relion(program: str, args: Sequence[str], cwd: str | os.PathLike, timeout: float = 600) -> str:
    """Run ``program args...`` in folder ``cwd``; return its stdout. Raises :class:`RelionNotFound`
    or :class:`RelionError` (non-zero exit, or an ``ERROR`` line, which some RELION programs print
    while exiting 0)."""
    cmd = [relion_program(program), *map(str, args)]
    try:
        proc = subprocess.run(cmd, cwd=str(cwd), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RelionError(f"{' '.join(cmd)}: still running after {timeout} s") from None
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 or "ERROR" in proc.stderr:
        tail = "\n".join(out.strip().splitlines()[-15:])
        raise RelionError(f"{' '.join(cmd)} (in {cwd}) exited with {proc.returncode}:\n{tail}")
    return proc.stdout


@contextlib.contextmanager
def _folder(workdir: str | os.PathLike | None) -> Iterator[Path]:
    if workdir is not None:
        p = Path(workdir)
        p.mkdir(parents=True, exist_ok=True)
        yield p
    else:
        with tempfile.TemporaryDirectory(prefix="cryolens_relion_") as tmp:
            yield Path(tmp)


def _array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _fmt(v) -> str:
    if isinstance(v, (str, np.str_)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.9g}"


def write_particles_star(path: str | os.PathLike, pixel_size: float, box_size: int, angles_deg,
                         origins_angst=None, columns: Mapping[str, object] | None = None,
                         image_names: Sequence[str] | None = None, voltage: float = 300.0, cs: float = 2.7,
                         amplitude_contrast: float = 0.1) -> Path:
    """Write a RELION 3.1 particle STAR file (one optics group) in RELION's conventions.

    angles_deg: ``(N, 3)`` ``(rot, tilt, psi)`` degrees. origins_angst: ``(N, 2)``
    ``rlnOrigin{X,Y}Angst`` (default 0). columns: further per-particle columns by RELION label,
    each ``(N,)`` (e.g. ``rlnDefocusU``; defaults 10000 Å for ``rlnDefocusU/V`` and 0 for
    ``rlnDefocusAngle``, ``rlnPhaseShift`` are written when absent). image_names: ``(N,)``
    ``index@stack`` strings (RELION's ``rlnImageName``; a placeholder when absent — relion_project
    needs the column but never opens it). Voltage kV, Cs mm, Q0 go into the optics table.
    """
    ang = _array(angles_deg).astype(np.float64).reshape(-1, 3)
    n = ang.shape[0]
    orig = np.zeros((n, 2)) if origins_angst is None else _array(origins_angst).astype(np.float64).reshape(n, 2)
    cols: dict[str, np.ndarray] = {
        "rlnAngleRot": ang[:, 0], "rlnAngleTilt": ang[:, 1], "rlnAnglePsi": ang[:, 2],
        "rlnOriginXAngst": orig[:, 0], "rlnOriginYAngst": orig[:, 1],
        "rlnDefocusU": np.full(n, 10000.0), "rlnDefocusV": np.full(n, 10000.0),
        "rlnDefocusAngle": np.zeros(n), "rlnPhaseShift": np.zeros(n),
    }
    for k, v in (columns or {}).items():
        arr = np.broadcast_to(_array(v), (n,))
        cols[k] = arr
    if "rlnDefocusV" not in (columns or {}) and "rlnDefocusU" in (columns or {}):
        cols["rlnDefocusV"] = cols["rlnDefocusU"]
    cols["rlnOpticsGroup"] = np.ones(n, dtype=np.int64)
    names = [f"{i + 1:06d}@none.mrcs" for i in range(n)] if image_names is None else list(image_names)
    if len(names) != n:
        raise ValueError(f"write_particles_star: {len(names)} image names for {n} particles")
    cols["rlnImageName"] = np.asarray(names)
    lines = ["", "# version 30001", "", "data_optics", "", "loop_"]
    optics = {"rlnOpticsGroup": 1, "rlnOpticsGroupName": "opticsGroup1", "rlnImagePixelSize": float(pixel_size),
              "rlnImageSize": int(box_size), "rlnImageDimensionality": 2, "rlnVoltage": float(voltage),
              "rlnSphericalAberration": float(cs), "rlnAmplitudeContrast": float(amplitude_contrast)}
    lines += [f"_{k} #{i + 1}" for i, k in enumerate(optics)]
    lines += [" ".join(_fmt(v) for v in optics.values()), "", "", "# version 30001", "", "data_particles", "",
              "loop_"]
    lines += [f"_{k} #{i + 1}" for i, k in enumerate(cols)]
    for r in range(n):
        lines.append(" ".join(_fmt(cols[k][r]) for k in cols))
    lines.append("")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def project(volume, pixel_size: float, angles_deg, origins_angst=None, columns: Mapping[str, object] | None = None,
            ctf: bool = False, voltage: float = 300.0, cs: float = 2.7, amplitude_contrast: float = 0.1,
            pad: int = 2, workdir: str | os.PathLike | None = None) -> np.ndarray:
    """``relion_project`` of ``volume`` ``(D, D, D)`` ``[z, y, x]`` at the given RELION angles
    (``(N, 3)`` degrees), origins (``(N, 2)`` Å) and CTF columns (applied only with ``ctf=True``,
    RELION's ``--ctf``). Returns the projections ``(N, D, D)`` float32 ``[n, y, x]``."""
    vol = _array(volume).astype(np.float32)
    d = vol.shape[-1]
    with _folder(workdir) as wd:
        write_volume(wd / "map.mrc", vol, pixel_size)
        write_particles_star(wd / "angles.star", pixel_size, d, angles_deg, origins_angst, columns,
                             voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast)
        args = ["--i", "map.mrc", "--o", "proj", "--ang", "angles.star", "--angpix", pixel_size, "--pad", pad]
        if ctf:
            args.append("--ctf")
        run_relion("relion_project", args, wd)
        return np.array(open_stack(wd / "proj.mrcs"), dtype=np.float32)


def reconstruct_star(star: str | os.PathLike, cwd: str | os.PathLike, ctf: bool = False, pad: int = 2,
                     output: str = "relion_reconstruct.mrc", extra_args: Sequence[str] = ()) -> np.ndarray:
    """``relion_reconstruct --i star`` run in folder ``cwd`` (where the STAR's image paths resolve).
    ``ctf``: RELION's ``--ctf`` (CTF correction). Returns the map ``(D, D, D)`` float32 ``[z, y, x]``."""
    args = ["--i", str(star), "--o", output, "--pad", pad, *extra_args]
    if ctf:
        args.append("--ctf")
    run_relion("relion_reconstruct", args, cwd)
    vol, _ = read_volume(Path(cwd) / output)
    return vol


def reconstruct(images, pixel_size: float, angles_deg, origins_angst=None,
                columns: Mapping[str, object] | None = None, ctf: bool = False, voltage: float = 300.0,
                cs: float = 2.7, amplitude_contrast: float = 0.1, pad: int = 2,
                workdir: str | os.PathLike | None = None, extra_args: Sequence[str] = ()) -> np.ndarray:
    """``relion_reconstruct`` from images ``(N, D, D)`` with RELION angles ``(N, 3)`` degrees,
    origins ``(N, 2)`` Å and CTF columns (used with ``ctf=True``). Returns ``(D, D, D)`` float32."""
    imgs = _array(images).astype(np.float32)
    n, d = imgs.shape[0], imgs.shape[-1]
    with _folder(workdir) as wd:
        write_stack(wd / "particles.mrcs", imgs, pixel_size)
        write_particles_star(wd / "particles.star", pixel_size, d, angles_deg, origins_angst, columns,
                             image_names=[f"{i + 1:06d}@particles.mrcs" for i in range(n)],
                             voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast)
        return reconstruct_star("particles.star", wd, ctf=ctf, pad=pad, extra_args=extra_args)


def parse_fsc_table(text: str) -> np.ndarray:
    """The ``rlnFourierShellCorrelation`` column of a RELION ``data_fsc`` table (STAR text), as
    float64 ``(D//2 + 1,)`` ordered by ``rlnSpectralIndex``."""
    labels: list[str] = []
    rows: list[list[str]] = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("_rln"):
            labels.append(s.split()[0][1:])
        elif labels and s and not s.startswith(("#", "data_", "loop_")):
            rows.append(s.split())
    if "rlnFourierShellCorrelation" not in labels or not rows:
        raise RelionError(f"no FSC table in RELION's output:\n{text[-500:]}")
    idx = np.array([int(r[labels.index("rlnSpectralIndex")]) for r in rows])
    val = np.array([float(r[labels.index("rlnFourierShellCorrelation")]) for r in rows])
    out = np.full(idx.max() + 1, np.nan)
    out[idx] = val
    return out


def fsc(vol1, vol2, pixel_size: float = 1.0, workdir: str | os.PathLike | None = None) -> np.ndarray:
    """``relion_image_handler --i map1 --fsc map2``: the FSC ``(D//2 + 1,)`` float64 of two
    ``(D, D, D)`` maps as RELION computes it. RELION prints 6 decimals (5 for negative values, which
    lose one to the sign in a fixed-width field), so the values are good to 5e-7 (5e-6 when negative)."""
    with _folder(workdir) as wd:
        write_volume(wd / "map1.mrc", _array(vol1).astype(np.float32), pixel_size)
        write_volume(wd / "map2.mrc", _array(vol2).astype(np.float32), pixel_size)
        out = run_relion("relion_image_handler", ["--i", "map1.mrc", "--fsc", "map2.mrc", "--angpix", pixel_size], wd)
    return parse_fsc_table(out)


# ---------------------------------------------------------------------------------------------
# Benchmark adapters: RELION 3.1 as a method with the registry's ``fit`` signature, so the runner
# scores it on the same tasks as the cryolens recipes (see :mod:`cryolens.bench.adapters`).
# ---------------------------------------------------------------------------------------------

def _write_input_star(particles, run_dir: Path, seed: int = 0) -> Path:
    """``particles.star`` (RELION 3.1) in ``run_dir`` with ``rlnRandomSubset`` 1/2 (equal random halves)."""
    from ..io.star import write_star
    from ..io.particles import half_set_labels

    p = particles.subset(np.arange(len(particles)))
    p.extra["rlnRandomSubset"] = half_set_labels(particles, seed) + 1
    return write_star(run_dir / "particles.star", p)


def _half_map_outputs(half1: np.ndarray, half2: np.ndarray, full: np.ndarray, pixel_size: float, extra: dict):
    import torch

    from ..methods.registry import MethodOutputs
    from ..metrics.fsc import fsc as _fsc
    from ..metrics.fsc import resolution_at

    curve = _fsc(half1, half2)
    metrics = {"resolution_halfmap_0143_A": resolution_at(curve, 0.143, pixel_size, full.shape[-1]),
               "fsc_halfmaps": curve.tolist(), **extra}
    return MethodOutputs(pixel_size=pixel_size, volume=torch.from_numpy(np.ascontiguousarray(full)),
                         half_maps=(torch.from_numpy(np.ascontiguousarray(half1)),
                                    torch.from_numpy(np.ascontiguousarray(half2))), metrics=metrics)


def fit_relion_reconstruct(particles, known, run, config, device=None, progress: bool = True):
    """Adapter: ``relion_reconstruct --ctf`` from the known poses and CTFs, once per random half
    (``--subset 1/2``) and once for all images; the files stay in ``run/relion``."""
    wd = run.path("relion")
    wd.mkdir(parents=True, exist_ok=True)
    _write_input_star(particles, wd, config.seed)
    ctf = particles.ctf is not None
    pad = config.pad
    t = config.timeout_s
    maps = []
    for name, extra in (("half1.mrc", ["--subset", "1"]), ("half2.mrc", ["--subset", "2"]), ("map.mrc", [])):
        args = ["--i", "particles.star", "--o", name, "--pad", pad, "--angpix", particles.pixel_size, *extra]
        if ctf:
            args.append("--ctf")
        run_relion("relion_reconstruct", args, wd, timeout=t)
        maps.append(read_volume(wd / name)[0])
    return _half_map_outputs(maps[0], maps[1], maps[2], particles.pixel_size, {})


def refine_command(config, pixel_size: float, box: int, ctf: bool) -> list[str]:
    """The ``relion_refine_mpi`` arguments of the auto-refine adapter (3D auto-refine with gold-standard
    halves, starting from ``initial_model`` low-pass filtered to ``ini_high_A``)."""
    diameter = config.particle_diameter_A or 0.9 * box * pixel_size
    args = ["--i", "particles.star", "--o", "out/run", "--ref", "initial.mrc", "--ini_high", config.ini_high_A,
            "--auto_refine", "--split_random_halves", "--particle_diameter", f"{diameter:.1f}",
            "--healpix_order", config.healpix_order, "--auto_local_healpix_order", config.local_healpix_order,
            "--offset_range", config.offset_range_px, "--offset_step", config.offset_step_px, "--sym", "C1",
            "--pad", 2, "--low_resol_join_halves", 40, "--norm", "--scale", "--flatten_solvent", "--zero_mask",
            "--oversampling", 1, "--dont_combine_weights_via_disc", "--pool", 30, "--j", 1, "--angpix", pixel_size,
            "--firstiter_cc"]
    if ctf:
        args.append("--ctf")
    return [str(a) for a in args]


def read_refine_outputs(out_dir: str | os.PathLike, particles) -> tuple[np.ndarray, np.ndarray, dict]:
    """Rotations ``(N, 3, 3)`` (cryolens convention) and shifts ``(N, 2)`` px from the final
    ``run_data.star`` of an auto-refine in ``out_dir``, in the order of ``particles`` (matched by
    ``rlnImageName``), plus RELION's reported resolution (``rlnCurrentResolution``, Å)."""
    from ..io.star import read_star

    out = Path(out_dir)
    refined = read_star(out / "run_data.star")
    key = {(Path(refined.image_path(i)).name, int(refined.image_index[i])): i for i in range(len(refined))}
    order = np.array([key[(Path(particles.image_path(i)).name, int(particles.image_index[i]))]
                      for i in range(len(particles))])
    rots = refined.rotations[order].numpy()
    shifts = refined.shifts[order].numpy() if refined.shifts is not None else np.zeros((len(particles), 2))
    info = {}
    model = out / "run_model.star"
    if model.is_file():
        for line in model.read_text().splitlines():
            if line.startswith("_rlnCurrentResolution"):
                info["relion_resolution_A"] = float(line.split()[1])
                break
    return rots, shifts, info


def fit_relion_refine(particles, known, run, config, device=None, progress: bool = True):
    """Adapter: RELION 3D auto-refine (``mpirun -np 3 relion_refine_mpi``: a master and two workers,
    one per half) from ``config.initial_model`` (a map path, low-pass filtered by RELION to
    ``ini_high_A``); returns the final map, the unfiltered half maps and the refined poses."""
    import torch

    from ..io.mrc import write_volume

    init = config.initial_model
    if not init:
        raise RelionError("relion_refine adapter: no initial_model given (the runner passes the task's)")
    wd = run.path("relion")
    (wd / "out").mkdir(parents=True, exist_ok=True)
    _write_input_star(particles, wd, config.seed)
    vol, _ = read_volume(init)
    write_volume(wd / "initial.mrc", vol, particles.pixel_size)
    args = refine_command(config, particles.pixel_size, particles.box_size, particles.ctf is not None)
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise RelionNotFound(f"mpirun not found on PATH ({INSTALL_HINT})")
    relion_program("relion_refine_mpi")
    cmd = [mpirun, "--allow-run-as-root", "--oversubscribe", "--mca", "mpi_yield_when_idle", "1", "-np", "3",
           "relion_refine_mpi", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log_path = wd / "relion_refine.log"  # streamed, so a long refinement can be followed
    with open(log_path, "w") as log_fh:
        proc = subprocess.run(cmd, cwd=str(wd), stdout=log_fh, stderr=subprocess.STDOUT, text=True, env=env,
                              timeout=config.timeout_s)
    if proc.returncode != 0 or not (wd / "out" / "run_class001.mrc").is_file():
        tail = "\n".join(log_path.read_text(errors="replace").strip().splitlines()[-15:])
        raise RelionError(f"relion_refine_mpi (in {wd}) exited with {proc.returncode}:\n{tail}")
    rots, shifts, info = read_refine_outputs(wd / "out", particles)
    h1 = read_volume(wd / "out" / "run_half1_class001_unfil.mrc")[0]
    h2 = read_volume(wd / "out" / "run_half2_class001_unfil.mrc")[0]
    full = read_volume(wd / "out" / "run_class001.mrc")[0]
    outputs = _half_map_outputs(h1, h2, full, particles.pixel_size, info)
    outputs.rotations = torch.from_numpy(rots).float()
    outputs.shifts = torch.from_numpy(shifts).float()
    return outputs
