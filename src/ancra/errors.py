"""Errors a user can fix.

Anything raised as :class:`UserError` is printed by the CLI as one line (``error: ...``) with a
non-zero exit code and no traceback. Raise it for bad configs, missing or corrupt files and
arguments out of range; let programming errors surface as ordinary exceptions.
"""


class UserError(ValueError):
    """A problem in the user's input that a message can explain (bad config, missing file...)."""
