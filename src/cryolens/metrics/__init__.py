"""Metrics: FSC and resolution (computed as RELION does), pose error after global alignment
(and handedness)."""

from .fsc import fsc, fsc_auc, fsc_frequencies, fsc_masked, resolution_at
from .pose_error import (align_rotations, apply_alignment, mirror_rotations, pose_error_summary,
                         rotate_map, rotation_errors)

__all__ = ["fsc", "fsc_auc", "fsc_masked", "fsc_frequencies", "resolution_at", "align_rotations", "apply_alignment",
           "mirror_rotations", "rotation_errors", "pose_error_summary", "rotate_map"]
