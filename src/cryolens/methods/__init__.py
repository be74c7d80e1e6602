"""Named reconstruction recipes composed from imaging/, inference/, io/ and metrics/ parts, each
registered by name in :mod:`~cryolens.methods.registry` (the CLI and the benchmark read it).

- ``backprojection`` (:mod:`~cryolens.methods.backprojection`): homogeneous map from known poses and CTFs.
"""

from . import backprojection
from .registry import Known, MethodOutputs, Recipe, get, recipes, register, unregister

register(Recipe(
    name="backprojection", fit=backprojection.fit,
    summary="CTF-weighted Fourier insertion with a per-shell Wiener/MAP filter, gold-standard half-maps",
    defaults={"pad": 2, "batch_size": 256, "seed": 0}, needs=frozenset({"poses", "ctf"}),
    heterogeneity="homogeneous", learned=False, reference="RELION relion_reconstruct (Scheres 2012)"), replace=True)
