"""Work counted without a clock: cost checks in tests must not be timed (timings vary with
the machine; calls do not)."""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ("calls_made",)


def calls_made(action: Callable[[], object]) -> int:
    """The Python and C function calls ``action`` makes: its work, counted without a clock."""
    calls = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call" or event == "c_call":
            calls += 1

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return calls
