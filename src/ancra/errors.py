"""Errors a user can fix.

Anything raised as :class:`UserError` is printed by the CLI as one line (``error: ...``) with a
non-zero exit code and no traceback. Raise it for bad configs, missing or corrupt files and
arguments out of range; let programming errors surface as ordinary exceptions.
"""


class UserError(ValueError):
    """A problem in the user's input that a message can explain (bad config, missing file...)."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when empty), cut to ``limit``:
    what a one-line refusal of an untrusted file quotes from the library that choked on it."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]
