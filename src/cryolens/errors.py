"""The one exception type for bad user input.

Anything a user can get wrong (a corrupt file, a missing column, an odd box) raises
:class:`InputError` with a one-line message that names the file and the problem; the
CLI prints that line and exits non-zero without a traceback.
"""


class InputError(ValueError):
    """Bad input: the message is one line naming the file (when there is one) and the problem."""
