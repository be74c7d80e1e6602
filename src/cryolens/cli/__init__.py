"""Command-line front: one module per command, each with ``add_args`` and ``main``."""
