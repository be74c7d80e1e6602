"""The exception types a user sees as one line.

Anything a user can get wrong (a corrupt file, a missing column, an odd box) raises
:class:`InputError` with a one-line message that names the file and the problem; the
CLI prints that line and exits non-zero without a traceback. A multi-process run whose
other processes died or cannot be reached raises :class:`DistributedError`, also one line.
"""


class InputError(ValueError):
    """Bad input: the message is one line naming the file (when there is one) and the problem."""


class DistributedError(RuntimeError):
    """A rendezvous or collective of a multi-process run failed: another rank died or cannot be reached
    (one-line message naming this rank and the timeout)."""
