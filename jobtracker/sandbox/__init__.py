"""A simulated Hume batch API ("sandbox") for the demo, the tests and the benchmarks.

Standard library only and independent of the rest of ``jobtracker``: the library never imports
it, and it never imports the library, so it can stand in for the real service without sharing
any code (and any bug) with the client under test.
"""

from .clock import ManualClock, ScaledClock
from .faults import FAULT_KINDS, HTTP_DATE, FaultConfig
from .jobs import SimJob
from .requestlog import RequestRecord
from .runner import serve
from .simulator import Sandbox

__all__ = [
    "FAULT_KINDS",
    "HTTP_DATE",
    "FaultConfig",
    "ManualClock",
    "RequestRecord",
    "Sandbox",
    "ScaledClock",
    "SimJob",
    "serve",
]
