"""cryoDRGN as an outside peer: convert a cryolens dataset to cryoDRGN's inputs, run its
``train_vae`` / ``train_nn`` / ``eval_vol`` in a subprocess, and read its outputs back so that
cryolens' metrics can score them.

cryoDRGN lives in its own virtual environment (its pins differ from ours), found by, in order: the
``program`` argument, the ``CRYOLENS_CRYODRGN`` environment variable (the venv folder or its
``bin/cryodrgn``), ``cryodrgn`` on ``PATH``. Install (outside the repository)::

    python3 -m venv /work/cdrgn-venv
    /work/cdrgn-venv/bin/pip install torch==2.13.0
    echo torch==2.13.0 > /tmp/c.txt && /work/cdrgn-venv/bin/pip install -c /tmp/c.txt cryodrgn==4.3.1
    export CRYOLENS_CRYODRGN=/work/cdrgn-venv

Conventions (docs/CONVENTIONS.md; the writers in :mod:`cryolens.io.cryodrgn`): the pose pickle holds
``rot = Rᵀ`` and ``trans = −shift / D``; the CTF pickle RELION's parameters. cryoDRGN's CTF is −1 ×
ours and it inverts the data sign by default, so the two cancel: images are handed over as they
are and its maps come out with our sign. Its maps are ``[z, y, x]`` on the same ``D`` box, in the
same frame and hand as our rotations (checked against ground truth: benchmarks/RESULTS.md, "cryoDRGN
4.3.1 side by side").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.cryodrgn import load_pickle, write_cryodrgn_ctf, write_cryodrgn_poses
from ..io.dataset import iterate_batches
from ..io.mrc import StackWriter, read_volume, stack_info
from ..io.particles import Particles

ENV_VAR = "CRYOLENS_CRYODRGN"
INSTALL_HINT = (f"install cryoDRGN 4.3.1 in its own venv (see cryolens.bench.cryodrgn) and set {ENV_VAR} "
                "to that venv")


class CryoDRGNNotFound(RuntimeError):
    """cryoDRGN is not installed where cryolens looks for it."""


class CryoDRGNError(RuntimeError):
    """A cryoDRGN command failed; the message ends with the tail of its output."""


def venv_program(name: str, env_var: str, program: str | os.PathLike | None, hint: str,
                 missing: type[Exception], label: str) -> Path:
    """Path of the executable ``name`` of an outside program living in its own venv, looked for in
    order: ``program`` (the venv folder or the executable), the environment variable ``env_var`` (the
    same), ``name`` on ``PATH``; else ``missing`` (an exception class) naming where it looked and ``hint``."""
    cand = program if program is not None else os.environ.get(env_var)
    if cand:
        p = Path(cand)
        if p.is_dir():
            p = p / "bin" / name
        if p.is_file() and os.access(p, os.X_OK):
            return p.resolve()
        raise missing(f"{label} not found at {cand} (from {'argument' if program else env_var}); {hint}")
    found = shutil.which(name)
    if found:
        return Path(found)
    raise missing(f"{label} not found ({env_var} unset and no {name} on PATH); {hint}")


def cryodrgn_program(program: str | os.PathLike | None = None) -> Path:
    """Path of the ``cryodrgn`` executable (module docstring for where it is looked for)."""
    return venv_program("cryodrgn", ENV_VAR, program, INSTALL_HINT, CryoDRGNNotFound, "cryoDRGN")


def cryodrgn_version(program: str | os.PathLike | None = None) -> str:
    """The version string cryoDRGN prints (e.g. ``cryoDRGN 4.3.1``)."""
    out = subprocess.run([str(cryodrgn_program(program)), "--version"], capture_output=True, text=True, timeout=120)
    return (out.stdout + out.stderr).strip()


# -------------------------------------------------------------------------------------------- inputs
@dataclass
class CryoDRGNInputs:
    """The files cryoDRGN reads: ``particles`` (.mrcs, image ``i`` = particle ``i``), ``poses``
    and ``ctf`` pickles (``ctf`` None without CTF)."""

    particles: Path
    poses: Path
    ctf: Path | None
    n: int
    box_size: int
    pixel_size: float


def _is_plain_stack(particles: Particles) -> bool:
    """True when the particles are all the images of one stack, in order (usable as they are)."""
    return (len(particles.image_files) == 1 and bool((particles.image_file_index == 0).all())
            and np.array_equal(particles.image_index, np.arange(len(particles)))
            and stack_info(particles.image_files[0])[0] == len(particles))


def prepare_inputs(particles: Particles, folder: str | os.PathLike, batch_size: int = 1000) -> CryoDRGNInputs:
    """Write cryoDRGN's inputs for ``particles`` into ``folder``: ``particles.mrcs`` (a link to the
    stack when it holds exactly the particles, in order; else the images copied in particle order),
    ``poses.pkl`` and ``ctf.pkl`` (when the particles have a CTF)."""
    if particles.rotations is None:
        raise InputError(f"{particles.name}: cryoDRGN's train_vae / train_nn need poses; these particles have none")
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    stack = folder / "particles.mrcs"
    if stack.is_symlink() or stack.exists():
        stack.unlink()
    if _is_plain_stack(particles):
        stack.symlink_to(Path(particles.image_files[0]).resolve())
    else:
        with StackWriter(stack, len(particles), particles.box_size, particles.pixel_size) as w:
            for idx, images in iterate_batches(particles, batch_size):
                w.write(int(idx[0]), images)
    poses = write_cryodrgn_poses(folder / "poses.pkl", particles)
    ctf = write_cryodrgn_ctf(folder / "ctf.pkl", particles) if particles.ctf is not None else None
    return CryoDRGNInputs(stack, poses, ctf, len(particles), particles.box_size, particles.pixel_size)


# ------------------------------------------------------------------------------------------ training
@dataclass
class CryoDRGNRun:
    """One cryoDRGN command: its output folder, wall-clock seconds, peak resident memory (MiB,
    :func:`run_measured`), CPU seconds, the seconds of each epoch (from its log), the command
    line and its output."""

    outdir: Path
    wall_s: float
    peak_rss_mib: float
    cpu_s: float
    epoch_s: list[float] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    log: str = ""

    def images_per_s(self, n_images: int) -> float:
        """Training throughput: ``n_images × epochs / Σ epoch seconds`` (start-up, data loading and
        the final encoding pass excluded, as cryoDRGN's own per-epoch timer does)."""
        return n_images * len(self.epoch_s) / sum(self.epoch_s) if self.epoch_s else float("nan")


_EPOCH = re.compile(r"=====> Epoch: (\d+) .*Finished in (?:(\d+) days?, )?(\d+):(\d+):(\d+(?:\.\d+)?)")


def parse_epoch_times(log: str) -> list[float]:
    """Seconds of each epoch from cryoDRGN's ``# =====> Epoch: k ... Finished in H:MM:SS.ffffff`` lines."""
    out = []
    for m in _EPOCH.finditer(log):
        days = int(m.group(2) or 0)
        out.append(days * 86400 + int(m.group(3)) * 3600 + int(m.group(4)) * 60 + float(m.group(5)))
    return out


_STAMPED_EPOCH = re.compile(r"\((\d{2}-[A-Za-z]{3}-\d{4} \d{2}:\d{2}:\d{2})\) # =====> Epoch: (\d+) ")


def epoch_stamps(log: str) -> dict[int, float]:
    """``{epoch: POSIX time}`` of cryoDRGN's ``(DD-Mon-YYYY HH:MM:SS) # =====> Epoch: k`` log lines (its
    logger's local time, second resolution): when each epoch's training ended."""
    from datetime import datetime

    return {int(m.group(2)): datetime.strptime(m.group(1), "%d-%b-%Y %H:%M:%S").timestamp()
            for m in _STAMPED_EPOCH.finditer(log)}


def _hwm_mib(pid: int) -> float:
    """``VmHWM`` (peak resident set of the process's own address space) in MiB, 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):  # the process is gone or its status unreadable: no peak known
        return 0.0
    return 0.0


def run_measured(cmd: list[str], log_path: str | os.PathLike, threads: int = 1,
                 timeout: float | None = None, poll_s: float = 0.1) -> tuple[float, float, float, int, str]:
    """Run ``cmd`` with ``threads`` torch/OpenMP threads, its output to ``log_path``; returns
    ``(wall s, peak RSS MiB, CPU s, exit code, output)``, the same way for any program (cryoDRGN's
    and cryolens' commands).

    Peak RSS: the largest ``VmHWM`` of the child read every ``poll_s`` seconds (``/proc``). Not the
    ``ru_maxrss`` of ``wait4``: on Linux that also counts the parent's resident set copied at fork,
    so a child of a large parent would report the parent's size. CPU s: user + system time of the
    child and its children (``wait4``)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               NUMEXPR_NUM_THREADS=str(threads))
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    peak = 0.0
    with open(log_path, "w") as logf:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=logf, stderr=subprocess.STDOUT, env=env)
        deadline = None if timeout is None else t0 + timeout
        while True:  # reap with wait4 (CPU times of this child); sample its memory until it ends
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _hwm_mib(proc.pid))
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                deadline = None
            time.sleep(poll_s)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    return (wall, peak, usage.ru_utime + usage.ru_stime, proc.returncode, log_path.read_text(errors="replace"))


def run_cryodrgn(args: list[str], outdir: str | os.PathLike, threads: int = 1,
                 program: str | os.PathLike | None = None, timeout: float | None = None) -> CryoDRGNRun:
    """Run ``cryodrgn ARGS`` (:func:`run_measured`; log in ``outdir/cryolens_cryodrgn.log``).
    Raises :class:`CryoDRGNError` with the output's tail on failure."""
    cmd = [str(cryodrgn_program(program)), *[str(a) for a in args]]
    outdir = Path(outdir)
    wall, rss, cpu, rc, log = run_measured(cmd, outdir / "cryolens_cryodrgn.log", threads, timeout)
    if rc != 0:
        tail = "\n".join(log.strip().splitlines()[-15:])
        raise CryoDRGNError(f"{' '.join(cmd)} exited with {rc}:\n{tail}")
    return CryoDRGNRun(outdir=outdir, wall_s=wall, peak_rss_mib=rss, cpu_s=cpu, epoch_s=parse_epoch_times(log),
                       command=cmd, log=log)


def _common(inputs: CryoDRGNInputs, outdir: Path, epochs: int, batch_size: int, seed: int,
            pe_type: str | None, domain: str | None) -> list[str]:
    args = [inputs.particles, "-o", outdir, "--poses", inputs.poses, "-n", epochs, "-b", batch_size,
            "--seed", seed, "--checkpoint", epochs + 1]  # no per-epoch checkpoint pass: only the final one
    if inputs.ctf is not None:
        args += ["--ctf", inputs.ctf]
    if pe_type is not None:
        args += ["--pe-type", pe_type]
    if domain is not None:
        args += ["--domain", domain]
    return [str(a) for a in args]


def train_vae(inputs: CryoDRGNInputs, outdir: str | os.PathLike, zdim: int = 8, epochs: int = 20,
              enc_layers: int = 3, enc_dim: int = 256, dec_layers: int = 3, dec_dim: int = 256,
              batch_size: int = 8, seed: int = 0, pe_type: str | None = None, domain: str | None = None,
              extra: list[str] | None = None, threads: int = 1, program: str | os.PathLike | None = None,
              timeout: float | None = None) -> CryoDRGNRun:
    """``cryodrgn train_vae`` (heterogeneous VAE, poses and CTF known) with the given architecture:
    encoder ``enc_layers × enc_dim`` (cryoDRGN's default residual MLP), decoder ``dec_layers × dec_dim``;
    ``pe_type`` / ``domain`` default to cryoDRGN's own (gaussian features, Fourier output in 4.3.1).
    No automatic ``cryodrgn analyze`` at the end. Latents: :func:`read_latents`."""
    outdir = Path(outdir)
    args = ["train_vae", *_common(inputs, outdir, epochs, batch_size, seed, pe_type, domain),
            "--zdim", str(zdim), "--enc-layers", str(enc_layers), "--enc-dim", str(enc_dim),
            "--dec-layers", str(dec_layers), "--dec-dim", str(dec_dim), "--no-analysis", *(extra or [])]
    return run_cryodrgn(args, outdir, threads, program, timeout)


def train_nn(inputs: CryoDRGNInputs, outdir: str | os.PathLike, epochs: int = 20, layers: int = 3, dim: int = 256,
             batch_size: int = 8, seed: int = 0, pe_type: str | None = None, domain: str | None = None,
             extra: list[str] | None = None, threads: int = 1, program: str | os.PathLike | None = None,
             timeout: float | None = None) -> CryoDRGNRun:
    """``cryodrgn train_nn`` (homogeneous neural volume, poses and CTF known), ``layers × dim``.
    Its map: ``outdir/reconstruct.mrc`` (:func:`read_maps`)."""
    outdir = Path(outdir)
    args = ["train_nn", *_common(inputs, outdir, epochs, batch_size, seed, pe_type, domain),
            "--layers", str(layers), "--dim", str(dim), *(extra or [])]
    return run_cryodrgn(args, outdir, threads, program, timeout)


# ------------------------------------------------------------------------------------------- outputs
def read_latents(outdir: str | os.PathLike, epoch: int | None = None) -> np.ndarray:
    """The posterior means ``z_mu`` ``(N, zdim)`` float32 of a ``train_vae`` run (``z.pkl``, or
    ``z.EPOCH.pkl``), one row per particle in input order."""
    path = Path(outdir) / ("z.pkl" if epoch is None else f"z.{epoch}.pkl")
    z = np.asarray(load_pickle(path, "latent pickle"), dtype=np.float32)  # the first of (z_mu, z_logvar)
    if z.ndim != 2:
        raise InputError(f"{path}: latents of shape {z.shape}, expected (N, zdim)")
    return z


def eval_vol(outdir: str | os.PathLike, z: np.ndarray, out: str | os.PathLike, pixel_size: float = 1.0,
             threads: int = 1, program: str | os.PathLike | None = None, epoch: int | None = None) -> list[Path]:
    """``cryodrgn eval_vol`` of a ``train_vae`` run at latent points ``z`` ``(M, zdim)``: writes
    ``out/vol_001.mrc`` … and returns their paths in the order of ``z``. epoch: the weights saved after
    that (0-based) epoch, ``weights.EPOCH.pkl``, instead of the final ``weights.pkl``."""
    outdir, out = Path(outdir), Path(out)
    z = np.atleast_2d(np.asarray(z, dtype=np.float64))
    out.mkdir(parents=True, exist_ok=True)
    zfile = out / "z_values.txt"
    np.savetxt(zfile, z)
    weights = outdir / ("weights.pkl" if epoch is None else f"weights.{epoch}.pkl")
    run_cryodrgn(["eval_vol", weights, "-c", outdir / "config.yaml", "-o", out, "--zfile", zfile,
                  "--Apix", f"{pixel_size:g}", "--vol-start-index", "0"], out, threads, program)
    paths = [out / f"vol_{i:03d}.mrc" for i in range(len(z))]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise CryoDRGNError(f"cryodrgn eval_vol wrote no {missing[0]}")
    return paths


def read_maps(paths: list[Path] | Path) -> np.ndarray:
    """Maps ``(M, D, D, D)`` float32 ``[z, y, x]`` from cryoDRGN ``.mrc`` outputs."""
    paths = [paths] if isinstance(paths, Path) else list(paths)
    return np.stack([read_volume(p)[0] for p in paths]).astype(np.float32)
