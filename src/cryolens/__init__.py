"""cryolens: cryo-EM reconstruction methods on one image formation model.

Conventions (arrays, units, Fourier layout, rotations, CTF) are those of
``docs/CONVENTIONS.md``: images ``(N, D, D)`` indexed ``[n, y, x]``, volumes ``(D, D, D)``
indexed ``[z, y, x]``, centered Fourier transforms, rotations mapping the image frame
into the volume frame.
"""

__version__ = "0.1.0"
