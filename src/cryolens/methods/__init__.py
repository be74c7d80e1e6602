"""Named reconstruction recipes composed from imaging/, io/ and metrics/ parts.

- :mod:`~cryolens.methods.backprojection`: homogeneous map from known poses and CTFs.
"""
