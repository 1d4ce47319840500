"""Run a sandbox in the foreground (the body of ``jobtracker sandbox``), independent of click."""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from .clock import ScaledClock
from .simulator import Sandbox


def serve(
    host: str,
    port: int,
    *,
    jobs: int,
    legacy: int,
    seed: int,
    api_key: str,
    time_scale: float,
    out: TextIO | None = None,
    stop_event: threading.Event | None = None,
) -> None:
    """Serve a sandbox with ``jobs`` current-shape and ``legacy`` legacy jobs until interrupted.

    Time is real time sped up by ``time_scale``.  Jobs were created over the last hour of
    simulated time, so a client polling right away sees every status and watches the queued
    and running ones finish.  Blocks until KeyboardInterrupt (or until ``stop_event`` is set,
    which tests use instead of a signal).
    """
    out = out or sys.stdout
    sandbox = Sandbox(
        api_key=api_key, seed=seed, clock=ScaledClock(time_scale), host=host, port=port
    )
    for count, legacy_fraction in ((jobs, 0.0), (legacy, 1.0)):
        sandbox.add_jobs(
            count,
            legacy_fraction=legacy_fraction,
            queue_s=(2.0, 120.0),
            run_s=(10.0, 1800.0),
            spread_s=3600.0,
        )
    with sandbox:
        print(f"Hume batch API sandbox: {sandbox.base_url}", file=out)
        print(f"  result storage host:  {sandbox.storage_url}", file=out)
        print(f"  API key:              {api_key}", file=out)
        print(
            f"  jobs: {jobs} current + {legacy} legacy, seed {seed}, time x{time_scale:g}", file=out
        )
        print("Press Ctrl+C to stop.", file=out, flush=True)
        waiter = stop_event or threading.Event()
        try:
            while not waiter.wait(0.5):
                pass
        except KeyboardInterrupt:
            print("stopping sandbox", file=out, flush=True)
