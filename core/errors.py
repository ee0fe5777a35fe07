"""Errors shared across layers, and the ways an exception becomes one line of text."""

from __future__ import annotations


class EngineError(RuntimeError):
    """An engine could not produce samples (bad model dir, out of memory...)."""


class StaleWeights(RuntimeError):
    """A sampler was asked to work at a policy version other than the one it holds."""


def remote_cause(e: BaseException) -> BaseException:
    """The exception a remote (Ray) task raised, or ``e`` itself when it carries none."""
    return getattr(e, "cause", None) or e


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception as one short line: its message, or its type name when it has none."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def typed_line(e: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line (the message cut at ``limit``), or the type name alone."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:limit]}" if text else type(e).__name__


def cause_line(e: BaseException, limit: int = 300) -> str:
    """A remote task's failure as ``Type: last line`` of its cause (a Ray error's message is a traceback)."""
    cause = remote_cause(e)
    lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"[:limit]
