"""Score one method's outputs on one task against the task's ground truth.

Frames: a method given the poses reconstructs in the truth's frame. A method that estimated poses
may have a rotated (or mirrored) frame: when it returns rotations, the global rotation ``G`` (and
hand) of :func:`cryolens.metrics.align_rotations` — modulo the particle's pseudo-symmetry, see
:func:`symmetric_pose_alignment` — is a candidate frame for its maps (``V(Gᵀ x)``, after
``z → −z`` when mirrored) beside the map as given; each candidate gets the (sub-voxel) translation of
the cross-correlation peak with the truth, and the one whose FSC-AUC against the truth is highest
is used. Maps are compared unmasked.

Consensus maps of heterogeneous tasks are compared with the population-weighted mean of the
ground-truth maps (the map a homogeneous method should converge to).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..imaging.shift import shift_volume
from ..io.mrc import read_volume
from ..metrics.classes import class_accuracy
from ..metrics.fsc import fsc, fsc_auc, resolution_at
from ..metrics.heterogeneity import conformational_clustering, per_conformation_fsc, per_image_fsc_auc
from ..metrics.discrete import discrete_scores
from ..metrics.latent import latent_vs_truth, spearman_best_axis
from ..metrics.pose_error import align_rotations, apply_alignment, rotate_map
from ..simulate.dataset import read_ground_truth


class Truth:
    """The ground truth of a cached dataset: ``volumes (K, D, D, D)``, ``labels (N,)``,
    ``rotations (N, 3, 3)``, ``state_values (N,)`` or None, ``pixel_size``."""

    def __init__(self, dataset_dir: str | Path):
        gt = read_ground_truth(dataset_dir)
        self.volumes = torch.stack([torch.from_numpy(np.ascontiguousarray(read_volume(p)[0]))
                                    for p in gt["volume_files"]]).float()
        self.labels = np.asarray(gt["labels"]).astype(np.int64)
        self.rotations = torch.from_numpy(np.asarray(gt["rotations"], dtype=np.float32))
        # each image's continuous coordinate (a hinge or swing angle, an ANM amplitude), when the states have one
        self.state_values = np.asarray(gt["state_values"])[self.labels] if "state_values" in gt else None
        self.pixel_size = float(gt["pixel_size"])
        pops = np.bincount(self.labels, minlength=self.volumes.shape[0]) / len(self.labels)
        self.consensus = (torch.as_tensor(pops, dtype=torch.float32)[:, None, None, None] * self.volumes).sum(0)
        self.model_files = list(gt["model_files"])
        self.symmetry = symmetry_operators(gt["model_files"][0] if gt["model_files"] else None)


def symmetry_operators(model_path, max_rmsd: float = 3.0) -> list[torch.Tensor]:
    """Rotations ``S`` (volume frame, ``(3, 3)`` float64) with ``V(S u) ≈ V(u)``: the identity, plus the
    pseudo two-fold of a homodimer — the Kabsch rotation superposing the Cα of its second-largest chain
    on the largest's (paired by residue number) when they superpose to within ``max_rmsd`` Å (the
    bundled HIV-1 protease models). Poses ``R`` and ``S R`` then give the same images, so a pose error is
    measured to the nearest of them."""
    ops = [torch.eye(3, dtype=torch.float64)]
    if model_path is None:
        return ops
    from ..io.atomic import read_atoms
    from ..metrics.atomic import backbone_ca, kabsch, rmsd_superposed

    ca = backbone_ca(read_atoms(model_path))
    if ca.chain_ids is None or ca.residue_numbers is None:
        return ops
    names, counts = np.unique(ca.chain_ids, return_counts=True)
    if len(names) < 2:
        return ops
    c1, c2 = names[np.argsort(-counts)[:2]]  # the two largest chains, paired by residue number
    r1 = {int(r): i for i, r in zip(np.nonzero(ca.chain_ids == c1)[0], ca.residue_numbers[ca.chain_ids == c1])}
    r2 = {int(r): i for i, r in zip(np.nonzero(ca.chain_ids == c2)[0], ca.residue_numbers[ca.chain_ids == c2])}
    common = sorted(set(r1) & set(r2))
    if len(common) < 10:
        return ops
    a = ca.coords[[r1[r] for r in common]]
    b = ca.coords[[r2[r] for r in common]]
    if rmsd_superposed(b, a) > max_rmsd:
        return ops
    r, _ = kabsch(b, a)
    ops.append(torch.as_tensor(r, dtype=torch.float64))
    return ops


def symmetric_pose_alignment(r_est: torch.Tensor, r_true: torch.Tensor, ops: list[torch.Tensor],
                             iterations: int = 3) -> tuple[torch.Tensor, bool, np.ndarray]:
    """Global alignment (and hand) of estimated poses to true ones when each true pose ``T`` is only
    defined up to ``S T`` (``S`` in ``ops``): align, give each image the copy of its truth nearest to
    its aligned pose, realign on those, a few times. Returns ``(G, mirrored, errors in degrees (N,))``."""
    from ..imaging.rotations import geodesic_distance

    copies = torch.stack([s.to(r_true) @ r_true for s in ops])  # (S, N, 3, 3)
    idx = torch.arange(r_true.shape[0])

    def errors(g, mirrored):
        aligned = apply_alignment(r_est, g, mirrored)
        return torch.stack([geodesic_distance(aligned, c) for c in copies])  # (S, N)

    # starts: the plain alignment to each copy of the truth, and the identity in both hands
    starts = [align_rotations(r_est, c) for c in copies]
    starts += [(torch.eye(3, dtype=torch.float64, device=r_est.device), h) for h in (False, True)]
    best = None
    for g, mirrored in starts:
        for _ in range(iterations if len(ops) > 1 else 0):
            d = errors(g, mirrored)
            g, mirrored = align_rotations(r_est, copies[d.argmin(0), idx])
        err = errors(g, mirrored).min(0).values
        med = float(err.median())
        if best is None or med < best[0]:
            best = (med, g, mirrored, err)
    _, g, mirrored, err = best
    return g, mirrored, np.rad2deg(err.cpu().numpy())


def translation_to(volume: torch.Tensor, reference: torch.Tensor,
                   subvoxel: bool = True) -> tuple[float, float, float]:
    """``(dz, dy, dx)`` voxels maximising the circular cross-correlation, so that ``volume`` shifted by
    it (:func:`~cryolens.imaging.shift_volume`, ``V(r − s)``) ≈ ``reference``: the integer peak, then
    (``subvoxel``) a 3-point parabola through the peak and its neighbours along each axis."""
    cc = torch.fft.irfftn(torch.fft.rfftn(reference.double()) * torch.fft.rfftn(volume.double()).conj(),
                          s=reference.shape)
    idx = np.unravel_index(int(torch.argmax(cc)), tuple(cc.shape))
    out = []
    for axis, i in enumerate(idx):
        n = cc.shape[axis]
        s = float(i if i <= n // 2 else i - n)
        if subvoxel:
            at = list(idx)
            vals = []
            for di in (-1, 0, 1):
                at[axis] = (i + di) % n
                vals.append(float(cc[tuple(at)]))
            curv = vals[0] - 2 * vals[1] + vals[2]
            if curv < 0:  # a maximum: vertex of the parabola, within half a voxel of the peak
                s += float(np.clip(0.5 * (vals[0] - vals[2]) / curv, -0.5, 0.5))
        out.append(s)
    return tuple(out)


class Frame:
    """How to move a method's maps into the truth's frame (identity when poses were known)."""

    def __init__(self, g: torch.Tensor | None = None, mirrored: bool = False,
                 shift: tuple[float, float, float] = (0.0, 0.0, 0.0)):
        self.g, self.mirrored, self.shift = g, mirrored, shift

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        v = v.detach().float().cpu()
        if self.g is not None:
            v = rotate_map(v, self.g, self.mirrored)
        if any(self.shift):
            if all(float(x).is_integer() for x in self.shift):
                v = torch.roll(v, tuple(int(x) for x in self.shift), dims=(-3, -2, -1))
            else:
                v = shift_volume(v, self.shift)
        return v

    def as_dict(self) -> dict:
        return {"rotation": None if self.g is None else self.g.tolist(), "mirrored": self.mirrored,
                "shift_voxels": [float(x) for x in self.shift]}


def best_frame(volume: torch.Tensor, reference: torch.Tensor, candidates: list[Frame]) -> Frame:
    """Of the candidate frames (rotation and hand), each given the cross-correlation translation onto
    ``reference`` (:func:`translation_to`), the one whose FSC-AUC against ``reference`` is highest.
    ``volume``, ``reference``: ``(D, D, D)``; the chosen frame is returned with its ``shift`` set."""
    best = None
    for cand in candidates:
        cand.shift = translation_to(cand(volume), reference)
        auc = fsc_auc(fsc(cand(volume), reference), reference.shape[-1])
        if best is None or auc > best[0]:
            best = (auc, cand)
    assert best is not None, "best_frame: no candidate frames"
    return best[1]


def _curve_metrics(curve: np.ndarray, threshold: float, px: float, d: int, prefix: str) -> dict:
    return {f"{prefix}_fsc": curve.tolist(), f"{prefix}_auc": fsc_auc(curve, d),
            f"{prefix}_resolution_A": resolution_at(curve, threshold, px, d)}


def _ca_rmsd_metrics(task, truth: Truth, outputs, n_images: int, device, arrays: dict) -> dict:
    """Median per-image Cα RMSD of the decoded models and of the base model the method was given
    (:func:`cryolens.bench.atomic_scoring.per_image_ca_rmsd`); the per-image values go to ``arrays``."""
    from .atomic_scoring import per_image_ca_rmsd
    from .suite import model_path

    r = per_image_ca_rmsd(outputs.decode_models, outputs.latents, truth.model_files, truth.labels,
                          base_model=model_path(task.dataset), n_images=n_images, device=device)
    arrays["per_image_ca_rmsd"] = r["rmsd"]
    return {"per_image_ca_rmsd_median_A": float(np.nanmedian(r["rmsd"])),
            "per_image_ca_rmsd_base_median_A": float(np.nanmedian(r["base_rmsd"]))}


def _conformation_metrics(pc: dict) -> dict:
    return {"conformation_resolution_A": pc["resolution_A"], "conformation_mean_resolution_A": pc["mean_resolution_A"],
            "conformation_mean_auc": pc["mean_auc"], "conformation_fsc": pc["fsc"]}


def _decoded_conformation_fsc(decode_aligned, latents, truth: Truth, device=None, batch: int = 16) -> dict:
    """CryoBench's per-conformation FSC of a continuous method: each true state's map against the map decoded
    from the mean latent of that state's images (states no image shows are left out), decoded ``batch`` at a time."""
    z = np.asarray(latents, dtype=np.float32).reshape(len(truth.labels), -1)
    states = np.unique(truth.labels)
    means = torch.as_tensor(np.stack([z[truth.labels == k].mean(0) for k in states]))
    with torch.no_grad():
        est = torch.cat([decode_aligned(means[i:i + batch].to(device or "cpu")).cpu()
                         for i in range(0, len(states), batch)])
    pc = per_conformation_fsc(est, truth.volumes[torch.as_tensor(states)], truth.pixel_size, paired=True)
    return {**_conformation_metrics(pc), "conformation_from": "decoded mean latent of each state's images"}


def _partition_scores(outputs, labels_true: np.ndarray, seed: int = 0) -> dict:
    """CryoBench's scores of a discrete set: AMI and class accuracy of the method's labels, or, for a method
    with continuous latents only, of k-means clusters of its latents (k = the number of true states,
    :class:`sklearn.cluster.KMeans`, 10 starts, seeded). Empty when the method gives neither."""
    if outputs.labels is not None:
        pred, source = np.asarray(outputs.labels), "labels"
    elif outputs.latents is not None:
        from sklearn.cluster import KMeans

        k = int(labels_true.max()) + 1
        z = np.asarray(outputs.latents, dtype=np.float64).reshape(len(labels_true), -1)
        pred, source = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(z), "kmeans_of_latents"
    else:
        return {}
    ds = discrete_scores(pred, labels_true)
    return {"ami": ds["ami"], "partition_accuracy": ds["class_accuracy"], "partition_from": source}


def score(task, truth: Truth, outputs, known, device=None, n_images: int = 100, n_cluster: int = 24,
          halves_latents: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[dict, dict]:
    """Metrics of ``outputs`` (a :class:`MethodOutputs`) on ``task``; returns ``(metrics, arrays)``:
    JSON-ready numbers, and per-image arrays for plots (``pose_errors_deg``, ``per_image_auc``,
    ``latents``, ``truth_values``)."""
    from ..metrics.latent import conformational_resolution

    m: dict = {}
    arrays: dict = {}
    px, d = truth.pixel_size, truth.volumes.shape[-1]
    scores = set(task.scores)
    het = task.heterogeneity
    frame = Frame()
    reference = truth.volumes[0] if het == "homogeneous" else truth.consensus
    candidates = [Frame()]
    if outputs.rotations is not None and not known.poses:
        r_est = torch.as_tensor(outputs.rotations).double()
        arrays["est_rotations"] = r_est.float().cpu().numpy()
        g, mirrored, err = symmetric_pose_alignment(r_est, truth.rotations.double(), truth.symmetry)
        candidates.append(Frame(g.cpu(), mirrored))
        if "pose_error" in scores:
            arrays["pose_errors_deg"] = err
            m.update(pose_error_median_deg=float(np.median(err)), pose_error_mean_deg=float(err.mean()),
                     pose_mirrored=bool(mirrored), pose_symmetry_ops=len(truth.symmetry))
    probe = outputs.volume if outputs.volume is not None else (
        torch.as_tensor(outputs.volumes).float().mean(0) if outputs.volumes is not None else None)
    if probe is not None and not known.poses:
        # the map's frame: as given, or the one implied by the poses — whichever fits the truth
        # (with a pseudo-symmetric particle the poses' global rotation can be one of the copies)
        frame = best_frame(probe, reference, candidates)
    m["frame"] = frame.as_dict()
    if outputs.volume is not None and "fsc_gt" in scores:
        v = frame(outputs.volume)
        m.update(_curve_metrics(fsc(v, reference), 0.5, px, d, "gt"))
    if outputs.half_maps is not None and "fsc_halfmaps" in scores:
        curve = fsc(outputs.half_maps[0], outputs.half_maps[1])
        m.update(_curve_metrics(curve, 0.143, px, d, "halfmap"))
    labels_true = truth.labels
    if outputs.labels is not None and "class_accuracy" in scores:
        ca = class_accuracy(np.asarray(outputs.labels), labels_true)
        m["class_accuracy"] = ca["accuracy"]
        m["class_confusion"] = ca["confusion"]
    if "adjusted_mutual_information" in scores:
        m.update(_partition_scores(outputs, labels_true))
    if outputs.volumes is not None and "per_conformation_fsc" in scores:
        est = torch.stack([frame(v) for v in outputs.volumes])
        m.update(_conformation_metrics(per_conformation_fsc(est, truth.volumes, px)))
    decode, latents = outputs.decode, outputs.latents
    if decode is None and outputs.volumes is not None and outputs.labels is not None:
        vols = outputs.volumes
        latents = np.asarray(outputs.labels).reshape(-1, 1).astype(np.float32)

        def decode(z):  # a discrete method's per-image map is its class map
            return torch.as_tensor(vols)[z[:, 0].long().cpu()].to(z.device)
    consensus_only = decode is None and outputs.volume is not None and het != "homogeneous"
    if consensus_only:  # a homogeneous map is every image's map: scored per image like the rest
        vol = outputs.volume
        latents = np.zeros((len(labels_true), 1), dtype=np.float32)

        def decode(z):
            return torch.as_tensor(vol).float()[None].expand(z.shape[0], *vol.shape).to(z.device)
    if decode is not None and latents is not None:
        def decode_aligned(z):
            return torch.stack([frame(v) for v in decode(z)])
        if "per_image_fsc_auc" in scores:
            auc = per_image_fsc_auc(decode_aligned, latents, truth.volumes, labels_true, n_images=n_images,
                                    device=device)
            arrays["per_image_auc"] = auc
            m.update(per_image_fsc_auc_mean=float(auc.mean()), per_image_fsc_auc_median=float(np.median(auc)))
        if "per_conformation_fsc" in scores and outputs.volumes is None and not consensus_only:
            m.update(_decoded_conformation_fsc(decode_aligned, latents, truth, device))
        if "conformational_clustering" in scores and not consensus_only:
            idx = np.sort(np.random.default_rng(1).choice(len(labels_true), min(n_cluster, len(labels_true)),
                                                          replace=False))
            with torch.no_grad():
                est = decode_aligned(torch.as_tensor(np.asarray(latents)[idx], dtype=torch.float32).to(device or "cpu"))
            cc = conformational_clustering(est, truth.volumes[torch.as_tensor(labels_true[idx])], px)
            m["clustering_mean_rand_index"] = cc["mean_rand_index"]
            m["clustering"] = cc
    if outputs.decode_models is not None and outputs.latents is not None and "per_image_ca_rmsd" in scores \
            and len(truth.model_files) == truth.volumes.shape[0] \
            and (task.dataset.get("heterogeneity") or {}).get("generator") not in ("mixture", "assembly"):
        # one molecule moving (hinge, swing, normal mode): a mixture's or an assembly's states are other atoms
        m.update(_ca_rmsd_metrics(task, truth, outputs, n_images, device, arrays))
    if outputs.latents is not None:
        z = np.asarray(outputs.latents, dtype=np.float64)
        arrays["latents"] = z
        if truth.state_values is not None:
            arrays["truth_values"] = truth.state_values
            if "latent_truth" in scores:
                lt = latent_vs_truth(z, truth.state_values)
                m.update(latent_truth_w1_deg=lt["w1"], latent_truth_r2=lt["r2"])
            if "latent_spearman" in scores:
                sp = spearman_best_axis(z, truth.state_values)
                m.update(latent_abs_spearman=sp["abs_spearman"], latent_spearman_axis=sp["axis"],
                         latent_abs_spearman_pc1=sp["abs_spearman_pc1"])
        if halves_latents is not None and "conformational_resolution" in scores:
            cr = conformational_resolution(*halves_latents)
            m.update(conformational_w2=cr["w2"], conformational_w2_relative=cr["w2_relative"],
                     conformational_w2_unaligned=cr["w2_unaligned"])
    return m, arrays
