"""The one base class of errors a user can fix from the message alone.

A job raises a ``UserError`` subclass for an input or a state the user controls (a bad config, a
missing column, a stale index, a dataset another job holds); its message says what to change.
``cli.main`` prints any of them as one line and exits 2, without a traceback. Anything else that
escapes a command is a bug or an unforeseen input: one line plus the path of its traceback. So a
command never needs its own ``except`` for the project's errors, and a foreign ``ValueError``
(a library's) is never mistaken for advice to the user.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """An input or state the user can fix; ``str(e)`` says how. Subclasses keep their historical
    base (``ValueError``, ``RuntimeError``) as well, so existing handlers still catch them."""
