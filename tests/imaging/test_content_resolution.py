"""content_resolution (imaging/grids.py): the resolution at which a map's spectrum ends, which sets
auto-refine's first E-step shells when no low-pass is given."""

import pytest
import torch

from cryolens.imaging.grids import content_resolution, lowpass_volume


@pytest.mark.parametrize("resolution", [40.0, 20.0, 10.0, 6.0])
def test_low_passed_map_gives_its_cut_off_within_a_shell(resolution):
    """A random map (D = 32, 1.5 Å/px: shells of 48/k Å) low-passed at ``resolution`` (2-shell raised cosine):
    the reported resolution is the shell of the cut-off, 48/round(48/resolution) Å, within one shell."""
    g = torch.Generator().manual_seed(0)
    vol = lowpass_volume(torch.randn(32, 32, 32, generator=g, dtype=torch.float64), resolution, 1.5)
    shell = 48.0 / resolution
    found = 48.0 / content_resolution(vol, 1.5)
    assert abs(found - shell) <= 1.0


def test_unfiltered_map_and_noise_hold_content_to_nyquist():
    """White noise and a map whose spectrum falls gently (a cosine from shell 12 that would reach 0 at shell 18,
    past Nyquist) have no cliff: 2 × the pixel size."""
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(32, 32, 32, generator=g, dtype=torch.float64)
    assert content_resolution(noise, 1.5) == 3.0
    smooth = lowpass_volume(noise, 4.0, 1.5, width_shells=6.0)  # shell 12, then a fall to 0.06 at Nyquist
    assert content_resolution(smooth, 1.5) == 3.0
