"""Benchmarks and outside references: the demo journey (simulate → reconstruct → score) and
wrappers that run RELION's programs on the same data."""
