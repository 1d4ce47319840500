"""Shared helpers for jobtracker's benchmarks (run by hand; figures go into the README).

* deterministic, seeded generation of current-shape batch-API responses (a list, or streamed
  to a JSON Lines file without holding them in memory);
* the text SQLAlchemy writes for a UTC datetime in SQLite;
* timing helpers, a child-process runner that measures that child's peak RSS;
* the figures table (value, target, PASS/FAIL) printed and written as JSON.

Benchmarks are scripts, not tests: ``.venv/bin/python bench/<name>.py --help``.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"

#: Seed of every generated data set; change it only together with the README figures.
SEED = 20240408
#: Newest creation time of generated jobs: 2025-12-01T00:00:00Z.
RANGE_END_MS = 1_764_547_200_000
#: Generated jobs are created over this many days before ``RANGE_END_MS``.
RANGE_DAYS = 365
DAY_MS = 86_400_000

# --- payload generation -----------------------------------------------------------------------

MODELS = ("face", "prosody", "language", "burst", "ner")
_STATUS_WEIGHTS = (("COMPLETED", 86), ("FAILED", 8), ("IN_PROGRESS", 3), ("QUEUED", 3))
_STATUSES = tuple(s for s, _ in _STATUS_WEIGHTS)
_CUM_WEIGHTS = tuple(
    sum(w for _, w in _STATUS_WEIGHTS[: i + 1]) for i in range(len(_STATUS_WEIGHTS))
)
_FAILURES = (
    "user 'acme-research' has exceeded their usage limit",
    "Failed to download https://media.example.com/interviews: 404 Not Found",
    "Media file is longer than the maximum duration of 3 hours",
    "Unsupported media type: application/octet-stream",
    "Internal error while running model; please retry the job",
    "Job timed out after 24 hours",
)
_FOLDERS = ("interviews", "calls", "podcasts", "support", "focus-groups", "webinars")
_MEDIA = (("mp4", "video/mp4"), ("wav", "audio/wav"), ("mp3", "audio/mpeg"), ("jpg", "image/jpeg"))
_SENTENCES = (
    "I am so happy with how this turned out!",
    "The delivery was late again and nobody called me back.",
    "Could you walk me through the pricing once more?",
    "Honestly, I did not expect the results to be this good.",
    "We need to talk about the schedule for next week.",
)


def _config(rng: random.Random, model: str) -> dict[str, Any]:
    """A model config like the API echoes back (see shared/samples/current/api-details.json)."""
    if model == "face":
        return {
            "descriptions": None,
            "facs": None if rng.random() < 0.8 else {},
            "fps_pred": rng.choice((1, 3, 3, 5)),
            "identify_faces": rng.random() < 0.2,
            "min_face_size": rng.choice((40, 60, 60, 80)),
            "prob_threshold": rng.choice((0.9, 0.99, 0.99)),
            "save_faces": rng.random() < 0.05,
        }
    if model == "prosody":
        return {
            "granularity": rng.choice(("utterance", "utterance", "word", "conversational_turn")),
            "identify_speakers": rng.random() < 0.3,
            "window": None if rng.random() < 0.85 else {"length": 4.0, "step": 1.0},
        }
    if model == "language":
        return {
            "granularity": rng.choice(("word", "word", "sentence", "utterance")),
            "identify_speakers": rng.random() < 0.3,
            "sentiment": None if rng.random() < 0.7 else {},
            "toxicity": None if rng.random() < 0.8 else {},
        }
    if model == "ner":
        return {"identify_speakers": rng.random() < 0.3}
    return {}  # burst takes no options


def make_payload(rng: random.Random, index: int) -> dict[str, Any]:
    """One current-shape ``GET /v0/batch/jobs/{id}`` answer; ``index`` numbers its inputs."""
    job_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    status = rng.choices(_STATUSES, cum_weights=_CUM_WEIGHTS)[0]
    models = rng.sample(MODELS, rng.choice((1, 1, 2, 2, 3)))
    media = rng.choice(_MEDIA)
    folder = rng.choice(_FOLDERS)
    urls = [
        f"https://media.example.com/{folder}/{index:07d}-{k}.{media[0]}"
        for k in range(rng.choice((1, 1, 1, 2)))
    ]
    files: list[dict[str, Any]] = []
    if rng.random() < 0.08:
        files = [
            {
                "filename": f"upload-{index:07d}-{k}.{media[0]}",
                "md5sum": f"{rng.getrandbits(128):032x}",
                "content_type": media[1],
            }
            for k in range(rng.choice((1, 2)))
        ]
    text: list[str] = []
    if rng.random() < 0.05:
        text = rng.sample(_SENTENCES, rng.choice((1, 2)))

    # Finished jobs spread over the whole range; unfinished ones are recent, as in real life.
    if status in ("QUEUED", "IN_PROGRESS"):
        created = RANGE_END_MS - rng.randrange(2 * DAY_MS)
    else:
        created = RANGE_END_MS - rng.randrange(RANGE_DAYS * DAY_MS)
    started = created + int(rng.expovariate(1 / 20_000))  # mean 20 s in the queue
    run_ms = min(int(rng.lognormvariate(math.log(120_000), 1.0)), 6 * 3_600_000)
    state: dict[str, Any] = {"created_timestamp_ms": created}
    if status == "COMPLETED":
        predictions = rng.randint(1, 60) * len(urls)
        state.update(
            ended_timestamp_ms=started + run_ms,
            num_errors=0 if rng.random() < 0.9 else rng.randint(1, 3),
            num_predictions=predictions,
            started_timestamp_ms=started,
        )
    elif status == "FAILED":
        if rng.random() < 0.7:  # most fail while running; the rest before they start
            state.update(started_timestamp_ms=started, ended_timestamp_ms=started + run_ms // 10)
        else:
            state.update(ended_timestamp_ms=created + rng.randrange(1_000, 60_000))
        state["message"] = rng.choice(_FAILURES)
    elif status == "IN_PROGRESS":
        state["started_timestamp_ms"] = started
    state["status"] = status

    return {
        "type": "INFERENCE",
        "job_id": job_id,
        "request": {
            "callback_url": (
                f"https://hooks.example.com/hume/{index}" if rng.random() < 0.1 else None
            ),
            "files": files,
            "models": {name: _config(rng, name) for name in sorted(models)},
            "notify": rng.random() < 0.2,
            "text": text,
            "urls": urls,
        },
        "state": state,
    }


def iter_payloads(count: int, seed: int = SEED) -> Iterator[dict[str, Any]]:
    """``count`` payloads, the same ones for the same seed (each job id is unique)."""
    rng = random.Random(seed)
    for index in range(count):
        yield make_payload(rng, index)


def write_jsonl(path: Path, count: int, seed: int = SEED) -> int:
    """Stream ``count`` payloads to a JSON Lines file (never all in memory); returns bytes."""
    with path.open("w", encoding="utf-8") as out:
        for payload in iter_payloads(count, seed):
            out.write(json.dumps(payload, separators=(",", ":")))
            out.write("\n")
    return path.stat().st_size


def freeze_gc() -> None:
    """Move everything allocated so far out of the collector's way.

    A benchmark holding 100,000 decoded payloads would otherwise make every full collection
    during the timed code walk them; a streamed import never holds them, so this keeps the
    measurement about the code under test.
    """
    gc.collect()
    gc.freeze()


# --- SQLite values as SQLAlchemy writes them ----------------------------------------------------

_EPOCH = datetime(1970, 1, 1)


def sqlite_ms(ms: int | None) -> str | None:
    """Epoch milliseconds as SQLAlchemy's SQLite ``DateTime`` text (naive UTC, microseconds)."""
    if ms is None:
        return None
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(" ", "microseconds")


def sqlite_dt(value: datetime) -> str:
    """An aware datetime as SQLAlchemy's SQLite ``DateTime`` text (naive UTC, microseconds)."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of an SQLite file."""
    return f"sqlite:///{path}"


def remove_sqlite(path: Path) -> None:
    """Delete an SQLite database file with its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def table_counts(path: Path, tables: tuple[str, ...]) -> dict[str, int]:
    """``SELECT count(*)`` of each table."""
    conn = sqlite3.connect(path)
    try:
        return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in tables}
    finally:
        conn.close()


# --- timing -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Timing:
    """Seconds of each timed run (warm-up runs excluded)."""

    runs: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def as_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": min(self.runs), "runs_s": self.runs}


def time_call(fn: Callable[[], object], *, runs: int = 5, warmup: int = 1) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times timed."""
    for _ in range(warmup):
        fn()
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - start)
    return Timing(timings)


@dataclass(slots=True)
class ChildRun:
    """A finished child process: exit code, wall time and its own peak resident set size."""

    cmd: list[str]
    returncode: int
    wall_s: float
    max_rss_bytes: int
    log: Path


# Runs argv[2:] and writes "<exit code> <ru_maxrss> <wall seconds>" to the file argv[1]. It is
# a fresh, small interpreter: a child spawned straight from the benchmark would start as a copy
# of the benchmark's address space, and Linux reports the larger of that copy's peak RSS (the
# benchmark's own, e.g. 100,000 payloads in memory) and the child's as the child's ru_maxrss.
_LAUNCHER = """
import os, sys, time
start = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as out:
    out.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss} {wall}")
"""


def run_child(cmd: list[str], log: Path, *, env: dict[str, str] | None = None) -> ChildRun:
    """Run ``cmd`` with stdout+stderr to ``log``; measure its wall time and its own peak RSS.

    A small launcher process spawns ``cmd`` and reads its resource usage with ``os.wait4`` (the
    usage of exactly that child, where ``RUSAGE_CHILDREN`` is the maximum over every child ever
    waited for), so the benchmark's own memory never shows up in the figure.
    """
    measured = log.with_suffix(".rusage")
    with log.open("wb") as out:
        launcher = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(measured), *cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
    if launcher.returncode != 0 or not measured.exists():
        raise RuntimeError(f"could not run {cmd[0]} (launcher exit {launcher.returncode})")
    code, maxrss, wall = measured.read_text().split()
    measured.unlink()
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return ChildRun(cmd, int(code), float(wall), int(maxrss) * scale, log)


def jobtracker_cli() -> list[str]:
    """The ``jobtracker`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "jobtracker"
    if script.exists():
        return [str(script)]
    found = shutil.which("jobtracker")
    return [found] if found else [sys.executable, "-m", "jobtracker"]


# --- results ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Figure:
    """One reported figure; ``passed`` is ``None`` for information-only figures."""

    name: str
    value: float
    unit: str
    target: str = ""
    passed: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return "info"
        return "PASS" if self.passed else "FAIL"


def _fmt_value(value: float, unit: str) -> str:
    if unit in ("x", "s"):
        return f"{value:,.2f} {unit}"
    if unit == "ms":
        return f"{value:,.1f} ms"
    return f"{value:,.0f} {unit}"


def render_table(figures: list[Figure]) -> str:
    """The figures as an aligned text table."""
    rows = [("figure", "value", "target", "result")]
    rows += [(f.name, _fmt_value(f.value, f.unit), f.target, f.verdict) for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            row[0].ljust(widths[0]),
            row[1].rjust(widths[1]),
            row[2].ljust(widths[2]),
            row[3],
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {f.name}: {f.note}" for f in figures if f.note]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """Where the figures were measured."""
    import sqlalchemy

    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def write_report(name: str, data: dict[str, Any], figures: list[Figure]) -> Path:
    """Write ``bench/out/<name>.json``: run metadata plus every figure."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    payload = {
        "benchmark": name,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        **data,
        "figures": [{**asdict(f), "result": f.verdict} for f in figures],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


@contextmanager
def workdir(path: Path | None, *, keep: bool, prefix: str) -> Iterator[Path]:
    """A directory for the benchmark's files.

    Without ``path``: a fresh temporary directory, removed at the end unless ``keep``. With
    ``path``: that directory (created if needed) and never removed, since it may hold other
    files; the benchmark removes the files it made there itself unless ``keep``.
    """
    if path is None:
        made = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        try:
            yield made
        finally:
            if keep:
                print(f"kept {made}")
            else:
                shutil.rmtree(made, ignore_errors=True)
    else:
        path.mkdir(parents=True, exist_ok=True)
        yield path
