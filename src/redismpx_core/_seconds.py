"""Validation of the durations users give us: the one check for a number of seconds."""

from __future__ import annotations

import math
from typing import Literal, overload

__all__ = ("check_seconds",)


@overload
def check_seconds(
    name: str, value: object, *, optional: Literal[False] = False, allow_zero: bool = False
) -> float: ...
@overload
def check_seconds(
    name: str, value: object, *, optional: bool, allow_zero: bool = False
) -> float | None: ...
def check_seconds(
    name: str, value: object, *, optional: bool = False, allow_zero: bool = False
) -> float | None:
    """*value* as a float of seconds: finite, > 0 (or >= 0 with ``allow_zero``), or
    ``None`` if ``optional``. Raises :class:`TypeError` or :class:`ValueError` naming
    *name*: a bool is not a number of seconds, and neither is infinity (a timer that
    never fires is said with ``None`` where one is allowed)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        expected = "a number of seconds or None" if optional else "a number of seconds"
        raise TypeError(f"{name!r} must be {expected}, not {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"{name!r} must be a finite number of seconds, got {seconds}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name!r} must be {bound}, got {seconds}")
    return seconds
