"""The one exception type for user mistakes.

Anything a user can fix (a missing file, an unknown config key, a clip that
cannot be decoded) raises `UserError` with a one-line message naming the file
or key at fault and what was expected. The CLI prints that line and exits 2;
every other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake the user can fix; its message is one line, shown as is."""
