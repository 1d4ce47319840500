"""Seeded, reproducible fault injection.

Each request on the API host (and, with ``storage_rate``, on the storage host) draws from one
``random.Random`` seeded by the config: the same seed and the same sequence of requests give the
same faults, so a failing client test can be replayed exactly.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate

FAULT_KINDS = ("5xx", "429", "slow", "malformed", "truncated", "stale")
#: Placeholder in ``FaultConfig.retry_after``: send an HTTP-date a second or so in the future.
HTTP_DATE = "<http-date>"
#: Kinds that make sense on the storage host (there is no job detail to be stale about).
STORAGE_KINDS = ("5xx", "429", "slow", "malformed", "truncated")


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """What to inject and how often.

    ``rate`` is the probability that an API-host request gets a fault (auth failures never do);
    ``storage_rate`` the same for the storage host.  ``kinds`` are picked uniformly.  ``seed``
    defaults to the sandbox seed.
    """

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    retry_after: tuple[str, ...] = ("1", "0", HTTP_DATE)
    slow_s: float = 0.2
    seed: int | None = None
    storage_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rate", "storage_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        unknown = set(self.kinds).difference(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; expected {FAULT_KINDS}")
        if not self.retry_after:
            raise ValueError("retry_after needs at least one value")
        if self.slow_s < 0:
            raise ValueError("slow_s must not be negative")


@dataclass(frozen=True, slots=True)
class Fault:
    """One drawn fault with every random detail already decided (status, body style...)."""

    kind: str
    status: int = 0
    html: bool = False
    retry_after: str = ""
    slow_s: float = 0.0
    variant: int = 0

    def retry_after_header(self) -> str:
        """The ``Retry-After`` value, resolving :data:`HTTP_DATE` against the wall clock.

        Wall clock, not the sandbox clock: the client compares the date with its own real time,
        and a simulated 2023 date would look long past.  Rounded up so it is never in the past.
        """
        if self.retry_after == HTTP_DATE:
            return formatdate(math.ceil(time.time()) + 1, usegmt=True)
        return self.retry_after


class FaultInjector:
    """Draws faults for requests according to a :class:`FaultConfig`; thread-safe."""

    def __init__(self, config: FaultConfig, default_seed: int) -> None:
        self.config = config
        seed = config.seed if config.seed is not None else default_seed
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def draw(self, role: str) -> Fault | None:
        """Decide whether (and how) to break the next request on host ``role``."""
        cfg = self.config
        rate = cfg.rate if role == "api" else cfg.storage_rate
        kinds = cfg.kinds if role == "api" else tuple(k for k in cfg.kinds if k in STORAGE_KINDS)
        if rate <= 0.0 or not kinds:
            return None
        with self._lock:
            # Always consume the same number of draws per request, hit or miss, so that a
            # change in one request's outcome does not shift every later one.
            roll, kind_roll, status_roll, html_roll, retry_roll = (
                self._rng.random() for _ in range(5)
            )
        if roll >= rate:
            return None
        kind = kinds[int(kind_roll * len(kinds))]
        if kind == "5xx":
            status = (500, 502, 503)[int(status_roll * 3)]
            return Fault(kind, status=status, html=html_roll < 0.5)
        if kind == "429":
            choice = cfg.retry_after[int(retry_roll * len(cfg.retry_after))]
            return Fault(kind, status=429, retry_after=choice)
        if kind == "slow":
            return Fault(kind, slow_s=cfg.slow_s)
        if kind == "malformed":
            return Fault(kind, variant=int(status_roll * 3))
        return Fault(kind)
