"""Solvent masks made from a map: the particle's own envelope, for masked FSCs during refinement.

:func:`solvent_mask` follows the recipe every refinement package uses for an automatic ("dynamic")
mask: the map is low-passed so that noise cannot shape the envelope, thresholded at a fraction of its
maximum, the binary region is grown by ``extend`` Å and given a raised-cosine edge ``soft`` Å wide.
The defaults (15 Å low-pass, threshold 0.2 of the maximum, 3 Å extension, 6 Å soft edge) are those of
cryoSPARC's dynamic mask; RELION's ``relion_mask_create`` takes the same steps with user values.
"""

from __future__ import annotations

import math

import torch
from scipy import ndimage

from .grids import lowpass_volume, soft_edge


def solvent_mask(volume: torch.Tensor, pixel_size: float, lowpass: float = 15.0, threshold: float = 0.2,
                 extend: float = 3.0, soft: float = 6.0) -> torch.Tensor:
    """``(D, D, D)`` soft mask in ``[0, 1]`` around the density of ``volume (D, D, D)`` (``pixel_size`` Å/px).

    The map low-passed at ``lowpass`` Å is thresholded at ``threshold`` × its maximum; voxels within
    ``extend`` Å of that region are 1, the mask then falls as a raised cosine to 0 at ``extend + soft`` Å
    (Euclidean distance to the region, :func:`scipy.ndimage.distance_transform_edt`). A map with no
    positive density gives all ones (nothing to mask). Same device as ``volume``, float32."""
    smooth = lowpass_volume(volume.detach().double().cpu(), lowpass, pixel_size)
    top = float(smooth.max())
    if not math.isfinite(top) or top <= 0:
        return torch.ones(volume.shape, dtype=torch.float32, device=volume.device)
    inside = (smooth >= threshold * top).numpy()
    dist = torch.from_numpy(ndimage.distance_transform_edt(~inside) * pixel_size)  # Å to the region's nearest voxel
    return soft_edge(dist, extend, soft).float().to(volume.device)
