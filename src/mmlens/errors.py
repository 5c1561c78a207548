"""Errors the user can fix: a bad option, a bad input file, an unreachable host.

Raise a :class:`UserError` subclass, its message one line saying what is wrong and what to do, for
a problem outside the code: ``python -m mmlens`` prints ``error: <message>`` and exits with status
2. Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message is one line that says what to do."""
