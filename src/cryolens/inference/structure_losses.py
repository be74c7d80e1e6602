"""Structure losses on the moving centres of an atomic (or residue-level) Gaussian mixture, as switchable
terms (CryoFold, AtomVAE; E2GMM's optional bond restraint).

Coordinates are ``(B, N, 3)`` in Å (one row per conformation, one centre per atom or residue, in the
mixture's frame). Every term is a per-conformation mean, in Å², so a batch of ``B`` decoded models gives
``(B,)`` values:

- **Cα distance** (:func:`ca_distance_loss`): consecutive residues of a chain keep their Cα atoms near
  ``3.8`` Å apart: ``mean_pairs (d_ij − 3.8)²`` over the pairs of :func:`consecutive_pairs`.
- **Bond lengths** (:func:`bond_length_loss`): given pairs keep given lengths (those of the base model):
  ``mean_pairs (d_ij − ℓ_ij)²``; the pairs of a residue model are its consecutive residues, those of an
  all-atom model its covalent bonds (:func:`neighbour_pairs` with a 1.9 Å cutoff).
- **Pull to the base model** (:func:`base_pull_loss`): ``mean_atoms |x_i − x⁰_i|²``.
- **Local rigidity** (:func:`rigidity_loss`): every pair of centres closer than a cutoff in the base
  model (:func:`neighbour_pairs`) keeps its base distance, the bond-length form over those pairs.

:class:`StructureRestraints` holds the pairs and reference lengths of one base model and the weight of each
term; a weight of 0 switches a term off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CA_DISTANCE_A = 3.8  # Å between consecutive Cα atoms of a trans peptide


def pair_distances(coords: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """``(B, P)`` distances (Å) between the centres ``pairs (P, 2)`` (indices) of ``coords (B, N, 3)`` Å."""
    d = coords[:, pairs[:, 0]] - coords[:, pairs[:, 1]]
    return d.square().sum(-1).clamp_min(1e-12).sqrt()  # clamped: finite gradient for coincident centres


def bond_length_loss(coords: torch.Tensor, pairs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``(B,)`` ``mean_pairs (d_ij − ℓ_ij)²`` Å² for ``pairs (P, 2)`` with target lengths ``(P,)`` Å."""
    if pairs.numel() == 0:
        return coords.new_zeros(coords.shape[0])
    return (pair_distances(coords, pairs) - lengths.to(coords.dtype)).square().mean(-1)


def ca_distance_loss(coords: torch.Tensor, pairs: torch.Tensor, target: float = CA_DISTANCE_A) -> torch.Tensor:
    """``(B,)`` ``mean_pairs (d_ij − target)²`` Å² over consecutive-residue pairs ``(P, 2)`` of Cα centres."""
    return bond_length_loss(coords, pairs, coords.new_full((pairs.shape[0],), float(target)))


def rigidity_loss(coords: torch.Tensor, pairs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``(B,)`` local rigidity: the neighbour pairs ``(P, 2)`` of the base model keep its distances ``(P,)``
    Å (:func:`bond_length_loss` over those pairs)."""
    return bond_length_loss(coords, pairs, lengths)


def base_pull_loss(coords: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``(B,)`` ``mean_i |x_i − x⁰_i|²`` Å²: the L2 pull of ``coords (B, N, 3)`` to ``base`` ``(N, 3)`` or
    ``(B, N, 3)`` Å."""
    return (coords - base.to(coords.dtype)).square().sum(-1).mean(-1)


def consecutive_pairs(chain_ids, residue_numbers) -> torch.Tensor:
    """``(P, 2)`` int64 index pairs ``(i, i+1)`` of centres (one per residue, in chain order) whose chain is the
    same and whose residue number goes up by exactly one (a gap in the numbering is a chain break)."""
    chains = np.asarray(chain_ids)
    nums = np.asarray(residue_numbers, dtype=np.int64)
    i = np.nonzero((chains[1:] == chains[:-1]) & (nums[1:] - nums[:-1] == 1))[0]
    return torch.as_tensor(np.stack([i, i + 1], axis=1), dtype=torch.long).reshape(-1, 2)


def neighbour_pairs(coords: torch.Tensor, cutoff: float) -> torch.Tensor:
    """``(P, 2)`` int64 pairs ``i < j`` of ``coords (N, 3)`` Å closer than ``cutoff`` Å."""
    c = torch.as_tensor(coords, dtype=torch.float64)
    i, j = torch.triu_indices(c.shape[0], c.shape[0], offset=1)
    keep = (c[i] - c[j]).norm(dim=-1) < cutoff
    return torch.stack([i[keep], j[keep]], dim=1)


@dataclass
class StructureRestraints:
    """The restraints of one base model (module docstring) and their weights.

    base: ``(N, 3)`` Å base coordinates. ca_pairs: ``(P, 2)`` consecutive-residue pairs (Cα term). bonds,
    bond_lengths: ``(Q, 2)`` pairs and ``(Q,)`` Å lengths (bond term). rigid_pairs, rigid_lengths: neighbour
    pairs and base distances (rigidity term). w_*: weights of the terms (0 = off)."""

    base: torch.Tensor
    ca_pairs: torch.Tensor
    bonds: torch.Tensor
    bond_lengths: torch.Tensor
    rigid_pairs: torch.Tensor
    rigid_lengths: torch.Tensor
    w_ca: float = 0.0
    w_bond: float = 0.0
    w_pull: float = 0.0
    w_rigid: float = 0.0

    @classmethod
    def from_base(cls, base: torch.Tensor, ca_pairs: torch.Tensor | None = None, bonds: torch.Tensor | None = None,
                  rigid_cutoff: float = 0.0, **weights: float) -> StructureRestraints:
        """Restraints of ``base (N, 3)`` Å: its consecutive pairs ``ca_pairs``, bonds ``bonds`` (lengths measured
        on ``base``), and rigidity over its pairs closer than ``rigid_cutoff`` Å (0: none); ``weights``:
        ``w_ca``, ``w_bond``, ``w_pull``, ``w_rigid``."""
        base = torch.as_tensor(base, dtype=torch.float32)
        empty = torch.zeros(0, 2, dtype=torch.long)
        ca = empty if ca_pairs is None else ca_pairs
        bonds = empty if bonds is None else bonds
        rigid = neighbour_pairs(base, rigid_cutoff) if rigid_cutoff > 0 else empty
        lengths = [pair_distances(base[None], p)[0] if p.numel() else base.new_zeros(0) for p in (bonds, rigid)]
        return cls(base, ca, bonds, lengths[0], rigid, lengths[1], **weights)

    def to(self, device) -> StructureRestraints:
        """The restraints with every tensor on ``device``."""
        return StructureRestraints(*(getattr(self, f).to(device) for f in (
            "base", "ca_pairs", "bonds", "bond_lengths", "rigid_pairs", "rigid_lengths")),
            w_ca=self.w_ca, w_bond=self.w_bond, w_pull=self.w_pull, w_rigid=self.w_rigid)

    def terms(self, coords: torch.Tensor, pull_to: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{name: (B,)}`` of the switched-on terms (``ca``, ``bond``, ``pull``, ``rigid``) at
        ``coords (B, N, 3)`` Å; the pull is to ``pull_to`` ``(B, N, 3)`` Å when given (e.g. the base moved by
        rigid-body motions), else to the base."""
        out = {}
        if self.w_ca > 0:
            out["ca"] = ca_distance_loss(coords, self.ca_pairs)
        if self.w_bond > 0:
            out["bond"] = bond_length_loss(coords, self.bonds, self.bond_lengths)
        if self.w_pull > 0:
            out["pull"] = base_pull_loss(coords, self.base if pull_to is None else pull_to)
        if self.w_rigid > 0:
            out["rigid"] = rigidity_loss(coords, self.rigid_pairs, self.rigid_lengths)
        return out

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B,)`` the weighted sum of ``terms`` (from :meth:`terms`)."""
        weights = {"ca": self.w_ca, "bond": self.w_bond, "pull": self.w_pull, "rigid": self.w_rigid}
        total = None
        for name, value in terms.items():
            total = weights[name] * value if total is None else total + weights[name] * value
        return total if total is not None else self.base.new_zeros(1)
