"""The one error base of genre-sweep: every failure a job expects derives from ``GenreSweepError``.

The job runner turns any of them, raised here or inside a Ray task, into one ``error: ...`` line and
exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GenreSweepError(Exception):
    """A failure a user can act on; its message names the input or setting and the rule or fix."""


def user_error(exc: BaseException) -> GenreSweepError | None:
    """The ``GenreSweepError`` behind ``exc``: itself, or the cause Ray wrapped in a ``RayTaskError``."""
    while exc is not None:
        if isinstance(exc, GenreSweepError) and not hasattr(exc, "cause"):
            return exc
        cause = getattr(exc, "cause", None)  # RayTaskError(cause): Ray's task or actor failure
        if isinstance(cause, BaseException):
            exc = cause
            continue
        return exc if isinstance(exc, GenreSweepError) else None
    return None


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line (a multi-line message keeps its first line)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
