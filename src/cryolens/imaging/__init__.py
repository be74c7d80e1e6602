"""The physics: transforms, grids, rotations, CTF, projection, shifts, noise, the forward model.

Torch only; every function works on batched tensors on any device and depends on nothing
else in cryolens. The exception, :mod:`.form_factor` (the elements' electron scattering factors),
reads gemmi's tables and is imported from its module, not from here.
"""

from .ctf import CTFParams, ctf_2d, ctf_from_freqs, electron_wavelength
from .fft import (fft2_centered, fft3_centered, hartley2, hartley3, ifft2_centered, ifft3_centered,
                  ihartley2, ihartley3, irfft2_centered, rfft2_centered, rfft3_centered)
from .forward import forward_fourier, render_images
from .gaussian import (gaussian_projection, gaussian_projection_ft, gaussian_volume, mixture_fourier,
                       mixture_projection_ft, mixture_projections, mixture_volumes)
from .grids import (circular_mask, coord_grid_2d, coord_grid_3d, flatten_solvent, flip_centered, freq_grid_2d,
                    freq_grid_3d, lowpass_filter_2d, lowpass_filter_3d, lowpass_volume, radial_average,
                    shell_filter_volume, shell_index_2d, shell_index_3d, shell_sum, spherical_mask)
from .noise import add_noise_at_snr, colored_noise, noise_sigma_for_snr, white_noise
from .project import project_real
from .rotations import (euler_to_matrix, geodesic_distance, inplane_pi_pose, matrix_to_euler, matrix_to_quaternion,
                        matrix_to_rotvec, matrix_to_s2s2, quaternion_to_matrix, random_rotations, rotvec_to_matrix,
                        s2s2_to_matrix)
from .shift import center_of_mass, center_volume, phase_ramp, phase_shift, shift_images, shift_volume
from .slice import (extract_from_sampling_volume, extract_slices, insert_slices, prepare_volume_ft, sampling_volume,
                    volume_from_ft)
from .so3_grid import (angular_step, children, grid_euler, grid_size, healpix_pix2ang, local_grid, n_pixels, n_psi,
                       nearest, parent, so3_grid)

__all__ = [name for name in dir() if not name.startswith("_")]
