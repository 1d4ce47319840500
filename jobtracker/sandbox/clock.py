"""Clocks for the sandbox: a manual clock for tests and a scaled real-time clock for demos.

The sandbox never reads ``time.time()`` for job state; it asks its clock.  Tests therefore drive
the whole job lifecycle by calling :meth:`ManualClock.advance` instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: Anything that returns the current time in epoch seconds (``time.time`` qualifies).
ClockFn = Callable[[], float]

#: First instant of a seeded sandbox (2023-11-14T22:13:20Z): recent enough to look real,
#: fixed so that two runs with the same seed produce byte-identical answers.
BASE_EPOCH = 1_700_000_000


def epoch_for_seed(seed: int) -> float:
    """Return the deterministic start time of a sandbox seeded with ``seed``.

    Different seeds start on different whole hours so that data from two sandboxes is easy to
    tell apart, while the value stays a whole number of seconds (exact in milliseconds).
    """
    return float(BASE_EPOCH + (seed % 1000) * 3600)


def to_ms(seconds: float) -> int:
    """Convert epoch seconds to integer epoch milliseconds.

    ``round`` rather than ``int``: ``1_700_000_000.123 * 1000`` is not exact in binary floating
    point, and truncating would sometimes land one millisecond early.
    """
    return round(seconds * 1000)


class ManualClock:
    """A clock that only moves when told to; thread-safe.

    Instances are callable, so one clock can be shared by several sandboxes via ``clock=``.
    """

    def __init__(self, start: float) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        """Return the current simulated time in epoch seconds."""
        with self._lock:
            return self._now

    __call__ = now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` and return the new time."""
        if seconds < 0:
            raise ValueError("a clock only moves forward; use set() to jump back")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, when: float) -> None:
        """Jump to ``when`` (epoch seconds), forwards or backwards."""
        with self._lock:
            self._now = float(when)


class ScaledClock:
    """Real time, optionally running faster (``scale > 1``) from the moment it was created.

    ``now() = origin + (time.time() - origin) * scale``: timestamps look like today, and a demo
    with ``scale=60`` sees a job that "takes ten minutes" finish in ten seconds.
    """

    def __init__(self, scale: float = 1.0, source: ClockFn = time.time) -> None:
        if scale <= 0:
            raise ValueError("time scale must be positive")
        self._scale = scale
        self._source = source
        self._origin = source()

    def now(self) -> float:
        """Return the scaled current time in epoch seconds."""
        return self._origin + (self._source() - self._origin) * self._scale

    __call__ = now
