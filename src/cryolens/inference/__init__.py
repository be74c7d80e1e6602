"""Inference of hidden variables: the Gaussian likelihood, the pose posterior (E-step) over a grid,
and modal pose search (exhaustive and hierarchical with frequency marching)."""

from .likelihood import (ImageTerms, SliceFn, as_slicer, ctf_images, estimate_noise_spectrum,
                         gaussian_log_likelihood, log_likelihood_table, log_normaliser, prepare_image_terms,
                         shell_weights, used_pixels, volume_slicer)
from .pose_search import PoseSearchResult, frequency_schedule, grid_search, hierarchical_search
from .posterior import PosePosterior, default_rotation_chunk, pose_posterior, translation_grid
from .em import EMResult, em_iteration, exact_m_step, insert_weighted

from .reconstruct import FourierAccumulator, wiener_regularisation

__all__ = [name for name in dir() if not name.startswith("_")]
