"""Download benchmark: streaming memory on one big artifact; many small files beside ``curl``.

Run by hand (not a test); the figures go into the README::

    .venv/bin/python bench/download.py                      # 500 MiB + 200 x 1 MiB, 5 repeats
    .venv/bin/python bench/download.py --big-mb 100 --files 50 --repeats 1
    .venv/bin/python bench/download.py --skip-memory --profile bench/out/download.prof

Sizes are binary: "1 MB" in the targets is 1 MiB (1,048,576 bytes), "500 MB" is 500 MiB.

The sandbox (simulated batch API, no faults, a manual clock) runs in a child process by default,
so its HTTP server does not share an interpreter lock with the client under test, like a remote
API; ``--in-process`` serves it from this process instead. Current-shape jobs carry no signed
URLs: every file comes from ``GET /v0/batch/jobs/{id}/artifacts`` on the API host, with the API
key. Before anything is timed the sandbox is asked for the sha256 of every artifact, which also
makes it compute (and cache) each zip's CRC, so no contender pays that. Before every timed run
``os.sync()`` writes back the page cache (untimed): on ext4 an ``fsync`` commits the journal,
which first flushes *all* dirty data, so without it jobtracker would pay for the 200 MiB the
previous curl run left unflushed.

1. Memory. One completed job whose artifacts zip is ``--big-mb`` MiB, polled into a fresh SQLite
   file; then ``python -m jobtracker download --kind artifacts`` runs as a subprocess
   (``HUME_API_KEY`` in its environment). Its own peak RSS (``ru_maxrss`` from ``os.wait4``, so
   exactly that child) must stay < 100 MiB; its RSS is also sampled from ``/proc`` while the
   ``.part`` file grows, to show it stays flat. ``python -m jobtracker downloads list`` on the
   same database gives the interpreter-plus-imports baseline. The file's sha256 must match
   (on disk and as recorded).
2. Throughput. ``--files`` completed jobs with ``--file-mb`` MiB artifacts, polled once into a
   template database (copied fresh for every jobtracker run). Each repeat runs, in an order
   rotated per repeat:

   * ``curl`` loop: one ``curl -sS -o FILE -H "X-Hume-Api-Key: ..." URL`` process per file,
     sequentially (what a person scripting it writes);
   * ``curl`` single process: every URL/output pair in one ``-K`` config file, fetched
     sequentially over one kept-alive connection (no ``--parallel``): the stricter baseline;
   * ``Tracker.download(client, kind="artifacts", concurrency=--concurrency)`` in this process,
     client rate limit ``--max-rps`` (1000: not the bottleneck); only the download call is timed;
   * the same as ``jobtracker download --concurrency N --max-rps 1000`` in a subprocess, timed
     end to end (interpreter start-up included, like each iteration of the curl loop);
   * diagnostic only (``--skip-diagnostic`` drops it): ``curl --parallel --parallel-max N`` with
     the same config, i.e. what a native client with N connections gets from this sandbox on
     this machine. It is not a baseline; it bounds what the ratio to the curl loop can be here.

   Target: jobtracker (in process) >= 2x the files/s of the curl loop; the ratio to the single
   curl process is reported beside it. Medians over ``--repeats``. Every file written by every
   contender is re-hashed and compared with the sandbox's sha256.

   Once more at the default ``--max-rps 10`` for information: the client-side rate limit applies
   to API requests (the real API allows 600/minute), and each current-shape file is one API
   request, so that run is held to ~10 files/s by design.

For every run the notes give the client's CPU seconds (this process for the in-process run, the
children for curl and the CLI), the sandbox process's, how busy the whole machine was
(``/proc/stat``) and the load average before it: other work on a shared machine shows there.

Prints a table and writes it as JSON to ``bench/out/download.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import multiprocessing
import os
import pstats
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection as PipeEnd
from pathlib import Path
from typing import Any, Protocol

from common import SEED, Figure, render_table, sqlite_url, workdir, write_report

import jobtracker.downloads as downloads_module
from jobtracker import Tracker
from jobtracker.client import API_KEY_HEADER, DEFAULT_MAX_RPS, BatchClient
from jobtracker.fetch import FetchOutcome, FetchTask, part_path
from jobtracker.layout import file_path
from jobtracker.sandbox import ManualClock, Sandbox
from jobtracker.sandbox.clock import epoch_for_seed

MIB = 1 << 20
MEMORY_TARGET_MIB = 100.0
SPEEDUP_TARGET = 2.0
KIND = "artifacts"
#: Sandbox seconds between the jobs' creation and the polls (every job has ended by then).
SETTLE_S = 60.0
#: How often the memory run's RSS and ``.part`` size are sampled.
SAMPLE_EVERY_S = 0.05


# --- the sandbox, here or in a child process ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """What one sandbox holds: ``jobs`` completed current-shape jobs of one artifact size."""

    seed: int
    jobs: int
    artifact_bytes: int


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    """What the benchmark learns from a started sandbox (sent over the pipe as a dict)."""

    base_url: str
    api_key: str
    now: float
    job_ids: list[str]
    expected: dict[str, str]  # job id -> sha256 of its artifacts zip
    sizes: dict[str, int]  # job id -> byte length of its artifacts zip
    setup_s: float


def build_sandbox(spec: SandboxSpec) -> tuple[Sandbox, SandboxInfo]:
    """Create the jobs, let them finish, start serving, and learn every expected sha256."""
    started = time.perf_counter()
    sb = Sandbox(
        seed=spec.seed,
        clock=ManualClock(epoch_for_seed(spec.seed)),
        artifact_bytes=spec.artifact_bytes,
    )
    ids = sb.add_jobs(spec.jobs, fail_fraction=0.0, queue_s=(1.0, 1.0), run_s=(1.0, 1.0))
    sb.clock.advance(SETTLE_S)
    sb.start()
    # Also computes (and caches) each zip's CRC, which the first request would otherwise pay.
    expected = {job_id: sb.expected_sha256(job_id, KIND) for job_id in ids}
    sizes = {job_id: sb.expected_size(job_id, KIND) for job_id in ids}
    info = SandboxInfo(
        base_url=sb.base_url,
        api_key=sb.api_key,
        now=sb.now(),
        job_ids=ids,
        expected=expected,
        sizes=sizes,
        setup_s=time.perf_counter() - started,
    )
    return sb, info


class SandboxHandle(Protocol):
    """What the benchmark needs from a running sandbox."""

    info: SandboxInfo
    separate: bool

    def counters(self) -> tuple[int, float]:
        """Requests received so far, and the sandbox process's CPU seconds (NaN if shared)."""
        ...

    def close(self) -> None: ...


class LocalSandbox:
    """The sandbox in this process (its server threads share this interpreter's lock)."""

    separate = False

    def __init__(self, spec: SandboxSpec) -> None:
        self._sb, self.info = build_sandbox(spec)

    def counters(self) -> tuple[int, float]:
        return self._sb.request_count(), float("nan")

    def close(self) -> None:
        self._sb.stop()


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sandbox_child(pipe: PipeEnd, spec: SandboxSpec) -> None:
    """Body of the sandbox process: build, serve, and answer commands until told to stop."""
    try:
        sb, info = build_sandbox(spec)
    except Exception:  # noqa: BLE001 - reported to the parent, which raises it
        pipe.send(("error", traceback.format_exc()))
        return
    pipe.send(("ok", asdict(info)))
    try:
        while True:
            command = pipe.recv()
            if command == "counters":
                pipe.send(("ok", (sb.request_count(), _cpu_self())))
            else:
                pipe.send(("ok", None))
                return
    except EOFError:
        return  # the parent went away
    finally:
        sb.stop()


class ChildSandbox:
    """The sandbox in a child process, driven over a pipe (like a remote API, on loopback)."""

    separate = True

    def __init__(self, spec: SandboxSpec) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._pipe, child_end = ctx.Pipe()
        self._proc = ctx.Process(
            target=_sandbox_child, args=(child_end, spec), name="sandbox", daemon=True
        )
        self._proc.start()
        child_end.close()
        self.info = SandboxInfo(**self._call(None))

    def _call(self, command: str | None) -> Any:
        if command is not None:
            self._pipe.send(command)
        if not self._pipe.poll(600):
            raise RuntimeError(f"sandbox process did not answer {command or 'start'!r}")
        status, value = self._pipe.recv()
        if status != "ok":
            raise RuntimeError(f"sandbox process failed:\n{value}")
        return value

    def counters(self) -> tuple[int, float]:
        count, cpu = self._call("counters")
        return int(count), float(cpu)

    def close(self) -> None:
        if self._proc.is_alive():
            with suppress(RuntimeError, OSError, EOFError):
                self._call("stop")
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._pipe.close()


@contextmanager
def sandbox(spec: SandboxSpec, in_process: bool) -> Iterator[SandboxHandle]:
    """A started sandbox, stopped at the end."""
    handle: SandboxHandle = LocalSandbox(spec) if in_process else ChildSandbox(spec)
    try:
        yield handle
    finally:
        handle.close()


# --- database --------------------------------------------------------------------------------


def fixed_clock(info: SandboxInfo) -> Callable[[], datetime]:
    """The tracker's clock: the sandbox's (manual, so fixed) time."""
    when = datetime.fromtimestamp(info.now, UTC)
    return lambda: when


def prepare_db(path: Path, info: SandboxInfo) -> dict[str, Any]:
    """A fresh SQLite file holding every sandbox job, polled once; one pending row per file."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    started = time.perf_counter()
    with Tracker(sqlite_url(path), clock=fixed_clock(info)) as tracker:
        tracker.upgrade()
        with tracker.client(info.base_url, info.api_key, max_rps=1000.0) as client:
            summary = tracker.poll(client)
        pending = tracker.outstanding_downloads(KIND, include_failed=False, limit=None)
    wanted = set(info.job_ids)
    found = {row.job_id for row in pending}
    if summary.outcome != "ok" or found != wanted:
        raise RuntimeError(
            f"poll {summary.outcome}: {len(found)} pending {KIND} rows for {len(wanted)} jobs"
        )
    return {"poll_s": time.perf_counter() - started, "poll_requests": summary.requests}


def copy_db(src: Path, dst: Path) -> None:
    """A consistent copy of an SQLite database (the backup API: WAL contents included)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{dst}{suffix}").unlink(missing_ok=True)
    source = sqlite3.connect(src)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


# --- verification ----------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(paths: dict[str, Path], info: SandboxInfo, label: str) -> int:
    """Every job's file exists and hashes to what the sandbox says; returns the file count."""
    problems = []
    for job_id in info.job_ids:
        path = paths[job_id]
        if not path.is_file():
            problems.append(f"{job_id}: missing {path}")
        elif sha256_file(path) != info.expected[job_id]:
            problems.append(f"{job_id}: sha256 differs ({path.stat().st_size} bytes)")
    if problems:
        shown = "; ".join(problems[:5])
        raise RuntimeError(f"{label}: {len(problems)} of {len(paths)} files wrong: {shown}")
    return len(paths)


def jobtracker_paths(dest: Path, info: SandboxInfo) -> dict[str, Path]:
    """Where jobtracker puts each job's artifacts under ``dest``."""
    return {job_id: file_path(dest, job_id, KIND) for job_id in info.job_ids}


def api_file_url(info: SandboxInfo, job_id: str) -> str:
    """The URL jobtracker fetches a current-shape job's artifacts from (same as curl's)."""
    return BatchClient(info.base_url, info.api_key).job_file_url(job_id, KIND)


# --- child processes -------------------------------------------------------------------------


@dataclass(slots=True)
class SampledRun:
    """A finished child: exit code, wall time, exact peak RSS and RSS samples over time."""

    cmd: list[str]
    returncode: int
    wall_s: float
    max_rss_bytes: int
    cpu_s: float
    # (seconds since start, VmRSS bytes, bytes in the watched file so far)
    samples: list[tuple[float, int, int]] = field(default_factory=list)


def _vm_rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _file_size(path: Path | None) -> int:
    if path is None:
        return 0
    for candidate in (path, part_path(path)):
        with suppress(OSError):
            return candidate.stat().st_size
    return 0


def run_sampled(
    cmd: list[str], log: Path, env: dict[str, str], watch: Path | None = None
) -> SampledRun:
    """Run ``cmd``; sample its RSS (and ``watch``'s growth) until it exits; exact peak RSS.

    ``os.wait4`` reports the resource usage of exactly this child (``RUSAGE_CHILDREN`` would be
    the maximum over every child this process ever waited for).
    """
    samples: list[tuple[float, int, int]] = []
    with log.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss = _vm_rss(proc.pid)
            if rss is not None:
                samples.append((time.perf_counter() - start, rss, _file_size(watch)))
            time.sleep(SAMPLE_EVERY_S)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: tell Popen
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: KiB on Linux, bytes on macOS
    cpu = usage.ru_utime + usage.ru_stime
    return SampledRun(cmd, proc.returncode, wall, usage.ru_maxrss * scale, cpu, samples)


def child_env(info: SandboxInfo) -> dict[str, str]:
    """The environment of a ``jobtracker`` subprocess: the API key, nothing from the user's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBTRACKER_", "HUME_"))}
    env["HUME_API_KEY"] = info.api_key
    return env


def jobtracker_cmd(*args: str) -> list[str]:
    """``python -m jobtracker ARGS`` with this interpreter."""
    return [sys.executable, "-m", "jobtracker", *args]


# --- 1. memory -------------------------------------------------------------------------------


@dataclass(slots=True)
class MemoryResult:
    """The big download and the no-op baseline."""

    size_bytes: int
    download: SampledRun
    baseline: SampledRun
    sha256_ok: bool
    db_sha256_ok: bool
    sandbox_setup_s: float
    sandbox_cpu_s: float

    @property
    def mib_per_s(self) -> float:
        return self.size_bytes / MIB / self.download.wall_s

    def rss_growth_bytes(self) -> int:
        """RSS once 10% of the body had arrived, to the highest RSS sampled afterwards."""
        tenth = [s for s in self.download.samples if s[2] >= self.size_bytes // 10]
        if not tenth:
            return 0
        return max(s[1] for s in tenth) - tenth[0][1]

    def rss_by_progress(self) -> list[dict[str, float]]:
        """The sampled RSS (MiB) when 0, 25, 50, 75 and 100% of the body was on disk."""
        out = []
        for share in (0.0, 0.25, 0.5, 0.75, 1.0):
            reached = [s for s in self.download.samples if s[2] >= share * self.size_bytes]
            if reached:
                t, rss, got = reached[0]
                out.append({"share": share, "t_s": t, "rss_mib": rss / MIB, "bytes": got})
        return out


def bench_memory(args: argparse.Namespace, wd: Path) -> MemoryResult:
    """One big artifact through ``python -m jobtracker download`` in a child process."""
    size = round(args.big_mb * MIB)
    print(f"memory: 1 job with a {size / MIB:,.0f} MiB artifact ...", flush=True)
    spec = SandboxSpec(seed=args.seed, jobs=1, artifact_bytes=size)
    with sandbox(spec, args.in_process) as sb:
        info = sb.info
        print(f"  sandbox ready in {info.setup_s:.1f} s (sha256 of the artifact)", flush=True)
        db_path = wd / "memory.db"
        prepare_db(db_path, info)
        url = sqlite_url(db_path)
        dest = wd / "memory-dest"
        shutil.rmtree(dest, ignore_errors=True)
        env = child_env(info)
        job_id = info.job_ids[0]
        target = file_path(dest.resolve(), job_id, KIND)

        baseline = run_sampled(
            jobtracker_cmd("downloads", "list", "--db", url), wd / "memory-baseline.log", env
        )
        if baseline.returncode != 0:
            raise RuntimeError(f"baseline failed; see {wd / 'memory-baseline.log'}")
        _, cpu_before = sb.counters()
        cmd = jobtracker_cmd(
            "download",
            "--db",
            url,
            "--dest",
            str(dest),
            "--api-url",
            info.base_url,
            "--kind",
            KIND,
        )
        print(f"  {' '.join(cmd[1:])}", flush=True)
        settle_disk()
        run = run_sampled(cmd, wd / "memory-download.log", env, watch=target)
        _, cpu_after = sb.counters()
        if run.returncode != 0:
            log = (wd / "memory-download.log").read_text(errors="replace")
            raise RuntimeError(f"download exited {run.returncode}:\n{log}")
        sha_ok = sha256_file(target) == info.expected[job_id]
        with Tracker(url) as tracker:
            detail = tracker.job(job_id)
        recorded = [d for d in detail.downloads if d["kind"] == KIND]
        db_ok = bool(recorded) and recorded[0]["sha256"] == info.expected[job_id]
        size_on_disk = target.stat().st_size
        if size_on_disk != info.sizes[job_id]:
            raise RuntimeError(f"downloaded {size_on_disk} bytes, expected {info.sizes[job_id]}")
        if not args.keep:
            shutil.rmtree(dest, ignore_errors=True)
    return MemoryResult(
        size_bytes=size_on_disk,
        download=run,
        baseline=baseline,
        sha256_ok=sha_ok,
        db_sha256_ok=db_ok,
        sandbox_setup_s=info.setup_s,
        sandbox_cpu_s=cpu_after - cpu_before,
    )


# --- 2. throughput ---------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    """One timed fetch of every file by one contender."""

    contender: str
    files: int
    bytes: int
    wall_s: float
    client_cpu_s: float
    sandbox_cpu_s: float
    requests: int
    verified: int
    machine_busy_s: float = float("nan")
    load_before: float = float("nan")
    peak_rss_bytes: int | None = None

    @property
    def files_per_s(self) -> float:
        return self.files / self.wall_s

    @property
    def mib_per_s(self) -> float:
        return self.bytes / MIB / self.wall_s


def settle_disk() -> None:
    """Write back every dirty page before a timed run (untimed).

    Without it a run pays for the previous one's writes: on ext4 (``data=ordered``) each
    ``fsync`` jobtracker makes commits the journal, which first flushes *all* dirty data,
    including the 200 MiB the preceding curl run left in the page cache.
    """
    os.sync()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def measured(sb: SandboxHandle) -> Iterator[dict[str, float]]:
    """Wall time, CPU of this process and of reaped children, sandbox CPU and requests.

    Also the CPU seconds the whole machine was busy (``/proc/stat``) and the load average
    before the run: other work on the machine shows up as busy time nobody here accounts for.
    """
    out: dict[str, float] = {}
    settle_disk()
    out["load_before"] = os.getloadavg()[0]
    requests0, sandbox0 = sb.counters()
    machine0 = _machine_busy()
    self0, children0 = time.process_time(), _children_cpu()
    started = time.perf_counter()
    yield out
    out["wall_s"] = time.perf_counter() - started
    out["self_cpu_s"] = time.process_time() - self0
    out["children_cpu_s"] = _children_cpu() - children0
    out["machine_busy_s"] = _machine_busy() - machine0
    requests1, sandbox1 = sb.counters()
    out["requests"] = requests1 - requests0
    out["sandbox_cpu_s"] = sandbox1 - sandbox0


def _machine_busy() -> float:
    """CPU seconds the machine has spent not idle since boot (NaN off Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / ticks


def make_run(
    contender: str, files: int, size: int, m: dict[str, float], client_cpu_s: float, verified: int
) -> Run:
    """A :class:`Run` from what :func:`measured` collected."""
    return Run(
        contender,
        files,
        size,
        m["wall_s"],
        client_cpu_s,
        m["sandbox_cpu_s"],
        int(m["requests"]),
        verified,
        machine_busy_s=m["machine_busy_s"],
        load_before=m["load_before"],
    )


def curl_header(info: SandboxInfo) -> str:
    """The API-key header as curl's ``-H`` takes it."""
    return f"{API_KEY_HEADER}: {info.api_key}"


def run_curl_loop(sb: SandboxHandle, dest: Path) -> Run:
    """One ``curl`` process per file, one after another."""
    info = sb.info
    dest.mkdir(parents=True)
    paths = {job_id: dest / f"{job_id}.zip" for job_id in info.job_ids}
    jobs = [(api_file_url(info, job_id), paths[job_id]) for job_id in info.job_ids]
    header = curl_header(info)
    with measured(sb) as m:
        for url, path in jobs:
            subprocess.run(["curl", "-sS", "-o", str(path), "-H", header, url], check=True)
    verified = verify_files(paths, info, "curl loop")
    return make_run(
        "curl loop", len(jobs), sum(info.sizes.values()), m, m["children_cpu_s"], verified
    )


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_curl_single(sb: SandboxHandle, dest: Path, config: Path, parallel: int = 0) -> Run:
    """One ``curl`` process fetching every URL (``-K`` config file).

    ``parallel`` 0: one URL after another over one kept-alive connection (the baseline).
    ``parallel`` N: ``--parallel --parallel-max N``, only as a diagnostic of how fast the
    sandbox serves N connections on this machine (not a baseline: the target is sequential curl).
    """
    info = sb.info
    dest.mkdir(parents=True)
    paths = {job_id: dest / f"{job_id}.zip" for job_id in info.job_ids}
    lines = ["silent", "show-error", f"header = {_quote(curl_header(info))}"]
    for job_id in info.job_ids:
        lines.append(f"url = {_quote(api_file_url(info, job_id))}")
        lines.append(f"output = {_quote(str(paths[job_id]))}")
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cmd = ["curl", "-K", str(config)]
    if parallel:
        cmd[1:1] = ["--parallel", "--parallel-max", str(parallel), "--no-progress-meter"]
    label = f"curl --parallel-max {parallel}" if parallel else "curl single process"
    with measured(sb) as m:
        subprocess.run(cmd, check=True)
    verified = verify_files(paths, info, label)
    return make_run(label, len(paths), sum(info.sizes.values()), m, m["children_cpu_s"], verified)


def run_jobtracker(
    sb: SandboxHandle,
    template: Path,
    db_path: Path,
    dest: Path,
    *,
    concurrency: int,
    max_rps: float,
    label: str,
    profiler: ThreadProfiler | None = None,
) -> Run:
    """``Tracker.download`` in this process on a fresh copy of the polled database."""
    info = sb.info
    copy_db(template, db_path)
    with (
        Tracker(sqlite_url(db_path), clock=fixed_clock(info)) as tracker,
        tracker.client(
            info.base_url, info.api_key, max_rps=max_rps, pool_size=concurrency * 2
        ) as client,
    ):
        tracker.runs(limit=1)  # the one-off schema-revision check, outside the timing
        with measured(sb) as m, profiler.active() if profiler else _nothing():
            summary = tracker.download(client, dest=dest, kind=KIND, concurrency=concurrency)
    if summary.outcome != "ok" or summary.files_done != len(info.job_ids):
        raise RuntimeError(f"{label}: {summary.line()}; {summary.failures[:3]}")
    verified = verify_files(jobtracker_paths(dest.resolve(), info), info, label)
    return make_run(label, summary.files_done, summary.bytes, m, m["self_cpu_s"], verified)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def run_jobtracker_cli(
    sb: SandboxHandle, template: Path, db_path: Path, dest: Path, log: Path, concurrency: int
) -> Run:
    """``python -m jobtracker download`` as a subprocess, timed end to end."""
    info = sb.info
    copy_db(template, db_path)
    cmd = jobtracker_cmd(
        "download",
        "--db",
        sqlite_url(db_path),
        "--dest",
        str(dest),
        "--api-url",
        info.base_url,
        "--kind",
        KIND,
        "--concurrency",
        str(concurrency),
        "--max-rps",
        "1000",
    )
    with measured(sb) as m:
        child = run_sampled(cmd, log, child_env(info))
    if child.returncode != 0:
        raise RuntimeError(f"jobtracker CLI exited {child.returncode}; see {log}")
    verified = verify_files(jobtracker_paths(dest.resolve(), info), info, "jobtracker CLI")
    run = make_run("jobtracker CLI", verified, sum(info.sizes.values()), m, child.cpu_s, verified)
    run.peak_rss_bytes = child.max_rss_bytes
    return run


# --- profiling -------------------------------------------------------------------------------


class ThreadProfiler:
    """cProfile over the download loop's thread and every fetch in the worker threads.

    ``cProfile`` sees one thread only, so while :meth:`active` the benchmark wraps the
    ``fetch`` that :mod:`jobtracker.downloads` submits to its pool (a patch of this process's
    module object, not of the library's files) in a per-thread profiler; all are merged.
    """

    def __init__(self, cpu: bool = True) -> None:
        # thread_time: each thread's own CPU seconds; perf_counter: wall time, waits included.
        self.cpu = cpu
        self._timer = time.thread_time if cpu else time.perf_counter
        self.main = cProfile.Profile(self._timer)
        self.workers: list[cProfile.Profile] = []
        self._local = threading.local()
        self._lock = threading.Lock()

    def _worker_profile(self) -> cProfile.Profile:
        prof: cProfile.Profile | None = getattr(self._local, "prof", None)
        if prof is None:
            prof = cProfile.Profile(self._timer)
            self._local.prof = prof
            with self._lock:
                self.workers.append(prof)
        return prof

    @contextmanager
    def active(self) -> Iterator[None]:
        # jobtracker.downloads looks ``fetch`` up in its module namespace at each submit.
        namespace = vars(downloads_module)
        original: Callable[[BatchClient, FetchTask], FetchOutcome] = namespace["fetch"]

        def profiled(client: BatchClient, task: FetchTask) -> FetchOutcome:
            prof = self._worker_profile()
            prof.enable()
            try:
                return original(client, task)
            finally:
                prof.disable()

        namespace["fetch"] = profiled
        self.main.enable()
        try:
            yield
        finally:
            self.main.disable()
            namespace["fetch"] = original

    def stats(self) -> tuple[pstats.Stats, pstats.Stats]:
        """(download loop thread, all worker threads merged)."""
        workers = pstats.Stats(self.workers[0])
        for prof in self.workers[1:]:
            workers.add(prof)
        return pstats.Stats(self.main), workers


# --- figures ---------------------------------------------------------------------------------


def median_run(runs: list[Run]) -> Run:
    """The run with the median wall time (the upper median for an even count)."""
    ordered = sorted(runs, key=lambda r: r.wall_s)
    return ordered[len(ordered) // 2]


def memory_figures(mem: MemoryResult) -> list[Figure]:
    peak = mem.download.max_rss_bytes / MIB
    base = mem.baseline.max_rss_bytes / MIB
    size_mib = mem.size_bytes / MIB
    return [
        Figure(
            f"{size_mib:,.0f} MiB download: peak RSS",
            peak,
            "MiB",
            f"< {MEMORY_TARGET_MIB:.0f} MiB",
            peak < MEMORY_TARGET_MIB and mem.sha256_ok and mem.db_sha256_ok,
            note=f"`python -m jobtracker download` as a subprocess, ru_maxrss via wait4; "
            f"sha256 {'matches' if mem.sha256_ok else 'DIFFERS'} (file), "
            f"{'matches' if mem.db_sha256_ok else 'DIFFERS'} (recorded)",
        ),
        Figure(
            "no-op CLI (downloads list): peak RSS",
            base,
            "MiB",
            note=f"interpreter + imports; the download adds {peak - base:,.1f} MiB on top of this",
        ),
        Figure(
            "RSS growth after 10% of the body",
            mem.rss_growth_bytes() / MIB,
            "MiB",
            note="sampled VmRSS every "
            f"{SAMPLE_EVERY_S * 1000:.0f} ms: highest minus the value at 10% of the bytes",
        ),
        Figure(
            f"{size_mib:,.0f} MiB download: wall time",
            mem.download.wall_s,
            "s",
            note="interpreter start-up, bookkeeping, fsync and rename included; "
            f"child CPU {mem.download.cpu_s:.2f} s, sandbox CPU {mem.sandbox_cpu_s:.2f} s",
        ),
        Figure(f"{size_mib:,.0f} MiB download: throughput", mem.mib_per_s, "MiB/s"),
    ]


def _cpu_note(run: Run) -> str:
    parts = [f"{run.files} x {run.bytes / run.files / MIB:g} MiB in {run.wall_s:.2f} s"]
    parts.append(f"{run.requests} requests")
    if run.client_cpu_s == run.client_cpu_s:  # not NaN
        parts.append(f"client CPU {run.client_cpu_s:.2f} s")
    if run.sandbox_cpu_s == run.sandbox_cpu_s:
        parts.append(f"sandbox CPU {run.sandbox_cpu_s:.2f} s")
    if run.machine_busy_s == run.machine_busy_s:
        cpus = os.cpu_count() or 1
        parts.append(f"machine busy {run.machine_busy_s / (run.wall_s * cpus):.0%} of {cpus} CPUs")
    if run.load_before == run.load_before:
        parts.append(f"load before {run.load_before:.1f}")
    return ", ".join(parts)


def throughput_figures(
    runs: dict[str, list[Run]], limited: Run | None, concurrency: int
) -> list[Figure]:
    jt = median_run(runs["jobtracker"])
    loop = median_run(runs["curl loop"])
    single = median_run(runs["curl single process"])
    cli = median_run(runs["jobtracker CLI"])
    figures: list[Figure] = []
    contenders = [
        (jt, f"jobtracker --concurrency {concurrency} (in process)"),
        (cli, f"jobtracker CLI --concurrency {concurrency} (subprocess)"),
        (loop, "curl, one process per file"),
        (single, "curl, one process, all URLs"),
    ]
    if runs.get("curl parallel"):
        contenders.append(
            (median_run(runs["curl parallel"]), f"[diagnostic] curl --parallel-max {concurrency}")
        )
    for run, label in contenders:
        figures.append(Figure(f"{label}: files/s", run.files_per_s, "files/s", note=_cpu_note(run)))
        figures.append(Figure(f"{label}: MiB/s", run.mib_per_s, "MiB/s"))
    ratio_loop = jt.files_per_s / loop.files_per_s
    ratio_single = jt.files_per_s / single.files_per_s
    figures += [
        Figure(
            "jobtracker / curl loop",
            ratio_loop,
            "x",
            f">= {SPEEDUP_TARGET:.0f}x",
            ratio_loop >= SPEEDUP_TARGET,
            note=f"files/s, medians of {len(runs['jobtracker'])}; jobtracker in process, only "
            "Tracker.download timed; it also hashes, fsyncs (file + directory) and records "
            "every file, curl does none of that",
        ),
        Figure(
            "jobtracker / curl single process",
            ratio_single,
            "x",
            note="the stricter baseline: one process, one kept-alive connection",
        ),
        Figure(
            "jobtracker CLI / curl loop",
            cli.files_per_s / loop.files_per_s,
            "x",
            note="end to end, interpreter start-up and imports included",
        ),
    ]
    if runs.get("curl parallel"):
        ceiling = median_run(runs["curl parallel"])
        figures.append(
            Figure(
                f"[diagnostic] curl --parallel-max {concurrency} / curl loop",
                ceiling.files_per_s / loop.files_per_s,
                "x",
                note="not a baseline: what a native client with the same number of connections "
                "gets from this sandbox on this machine, i.e. the ceiling for the ratio above",
            )
        )
    if limited is not None:
        figures.append(
            Figure(
                f"jobtracker at --max-rps {DEFAULT_MAX_RPS:g} (default): files/s",
                limited.files_per_s,
                "files/s",
                note=f"{limited.files} files in {limited.wall_s:.1f} s; the rate limit spaces "
                "API requests (each current-shape file is one), as the real API requires",
            )
        )
    return figures


# --- main ------------------------------------------------------------------------------------


def bench_throughput(
    args: argparse.Namespace, wd: Path
) -> tuple[dict[str, list[Run]], Run | None, dict[str, Any], ThreadProfiler | None]:
    size = round(args.file_mb * MIB)
    print(
        f"throughput: {args.files} jobs with {size / MIB:g} MiB artifacts, "
        f"{args.repeats} repeat(s) ...",
        flush=True,
    )
    spec = SandboxSpec(seed=args.seed, jobs=args.files, artifact_bytes=size)
    limited: Run | None = None
    profiler: ThreadProfiler | None = None
    with sandbox(spec, args.in_process) as sb:
        info = sb.info
        print(f"  sandbox ready in {info.setup_s:.1f} s", flush=True)
        template = wd / "throughput-template.db"
        setup = prepare_db(template, info)
        db_path = wd / "throughput.db"

        def fresh(name: str) -> Path:
            path = wd / name
            shutil.rmtree(path, ignore_errors=True)
            return path

        def done(path: Path) -> None:
            if not args.keep:
                shutil.rmtree(path, ignore_errors=True)

        contenders: dict[str, Callable[[Path, int], Run]] = {
            "curl loop": lambda dest, _: run_curl_loop(sb, dest),
            "curl single process": lambda dest, r: run_curl_single(
                sb, dest, wd / f"curl-single-{r}.cfg"
            ),
            "jobtracker": lambda dest, _: run_jobtracker(
                sb,
                template,
                db_path,
                dest,
                concurrency=args.concurrency,
                max_rps=args.max_rps,
                label="jobtracker",
            ),
            "jobtracker CLI": lambda dest, r: run_jobtracker_cli(
                sb, template, db_path, dest, wd / f"cli-{r}.log", args.concurrency
            ),
        }
        if not args.skip_diagnostic:
            contenders["curl parallel"] = lambda dest, r: run_curl_single(
                sb, dest, wd / f"curl-parallel-{r}.cfg", parallel=args.concurrency
            )
        runs: dict[str, list[Run]] = {name: [] for name in contenders}
        names = list(contenders)
        for repeat in range(1, args.repeats + 1):
            # Rotate the order, so no contender always runs right after the same other one.
            shift = (repeat - 1) % len(names)
            for name in names[shift:] + names[:shift]:
                dest = fresh(f"{name.replace(' ', '-')}-{repeat}")
                runs[name].append(contenders[name](dest, repeat))
                done(dest)
            print(
                f"  repeat {repeat}: "
                + ", ".join(f"{name} {r[-1].wall_s:.2f} s" for name, r in runs.items()),
                flush=True,
            )
        if args.profile is not None:
            profiler = ThreadProfiler(cpu=args.profile_clock == "cpu")
            dest = fresh("jobtracker-profiled")
            run = run_jobtracker(
                sb,
                template,
                db_path,
                dest,
                concurrency=args.concurrency,
                max_rps=args.max_rps,
                label="jobtracker (profiled)",
                profiler=profiler,
            )
            setup["profiled_run"] = asdict(run)
            done(dest)
            print(f"  profiled run: {run.wall_s:.2f} s", flush=True)
        if not args.skip_rate_limited:
            dest = fresh("jobtracker-limited")
            print(f"  jobtracker at --max-rps {DEFAULT_MAX_RPS:g} ...", flush=True)
            limited = run_jobtracker(
                sb,
                template,
                db_path,
                dest,
                concurrency=args.concurrency,
                max_rps=DEFAULT_MAX_RPS,
                label=f"jobtracker max-rps {DEFAULT_MAX_RPS:g}",
            )
            done(dest)
        setup.update(sandbox_setup_s=info.setup_s, file_bytes=size, sandbox_separate=sb.separate)
        setup["curl_example"] = [
            "curl",
            "-sS",
            "-o",
            "FILE",
            "-H",
            f"{API_KEY_HEADER}: {info.api_key}",
            api_file_url(info, info.job_ids[0]),
        ]
    return runs, limited, setup, profiler


def write_profile(profiler: ThreadProfiler, path: Path) -> str:
    """Save the merged profiles; return the top entries as text."""
    import io

    main_stats, worker_stats = profiler.stats()
    path.parent.mkdir(parents=True, exist_ok=True)
    main_stats.dump_stats(str(path.with_suffix(".loop.prof")))
    worker_stats.dump_stats(str(path.with_suffix(".workers.prof")))
    text = io.StringIO()
    clock = "thread CPU" if profiler.cpu else "wall"
    for title, stats in (
        (f"download loop thread, {clock} s", main_stats),
        (f"fetch workers, {clock} s", worker_stats),
    ):
        text.write(f"=== {title} (cumulative) ===\n")
        stats.stream = text  # type: ignore[attr-defined]
        stats.sort_stats("cumulative").print_stats(25)
        text.write(f"=== {title} (tottime) ===\n")
        stats.sort_stats("tottime").print_stats(15)
    return text.getvalue()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Peak memory of one big download; small-file throughput beside curl.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--big-mb", type=float, default=500.0, help="MiB of the big artifact")
    parser.add_argument("--files", type=int, default=200, help="small files to fetch")
    parser.add_argument("--file-mb", type=float, default=1.0, help="MiB of each small file")
    parser.add_argument("--concurrency", type=int, default=8, help="jobtracker --concurrency")
    parser.add_argument(
        "--max-rps", type=float, default=1000.0, help="jobtracker's rate limit in the timed runs"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per contender")
    parser.add_argument("--seed", type=int, default=SEED, help="sandbox seed")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="serve the sandbox from this process instead of a child process",
    )
    parser.add_argument("--skip-memory", action="store_true", help="skip the big download")
    parser.add_argument("--skip-throughput", action="store_true", help="skip the small files")
    parser.add_argument(
        "--skip-rate-limited", action="store_true", help="skip the run at --max-rps 10"
    )
    parser.add_argument(
        "--skip-diagnostic",
        action="store_true",
        help="skip the curl --parallel-max N runs (a ceiling diagnostic, not a baseline)",
    )
    parser.add_argument(
        "--profile", type=Path, help="cProfile one extra in-process run; stats next to this path"
    )
    parser.add_argument(
        "--profile-clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="profile each thread's CPU time, or wall time (waits on sockets and fsync included)",
    )
    parser.add_argument("--workdir", type=Path, help="where databases and files go")
    parser.add_argument("--keep", action="store_true", help="keep databases and files")
    args = parser.parse_args(argv)
    if args.files < 1 or args.repeats < 1 or args.concurrency < 1:
        parser.error("--files, --repeats and --concurrency must be positive")
    if args.big_mb <= 0 or args.file_mb <= 0:
        parser.error("--big-mb and --file-mb must be positive")
    if shutil.which("curl") is None and not args.skip_throughput:
        parser.error("curl is not on PATH")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    figures: list[Figure] = []
    data: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    profile_text = ""
    with workdir(args.workdir, keep=args.keep, prefix="jt-bench-download-") as wd:
        if not args.skip_memory:
            mem = bench_memory(args, wd)
            figures += memory_figures(mem)
            data["memory"] = {
                "size_bytes": mem.size_bytes,
                "download": {**asdict(mem.download), "samples": len(mem.download.samples)},
                "baseline": {**asdict(mem.baseline), "samples": len(mem.baseline.samples)},
                "rss_by_progress": mem.rss_by_progress(),
                "sha256_ok": mem.sha256_ok,
                "db_sha256_ok": mem.db_sha256_ok,
                "sandbox_setup_s": mem.sandbox_setup_s,
                "sandbox_cpu_s": mem.sandbox_cpu_s,
            }
            for point in mem.rss_by_progress():
                print(
                    f"  {point['share']:>4.0%} on disk at {point['t_s']:5.2f} s: "
                    f"RSS {point['rss_mib']:.1f} MiB",
                    flush=True,
                )
        if not args.skip_throughput:
            runs, limited, setup, profiler = bench_throughput(args, wd)
            figures += throughput_figures(runs, limited, args.concurrency)
            data["throughput"] = {
                **setup,
                "runs": {k: [asdict(r) for r in v] for k, v in runs.items()},
                "medians": {
                    k: {
                        "wall_s": statistics.median(r.wall_s for r in v),
                        "files_per_s": median_run(v).files_per_s,
                    }
                    for k, v in runs.items()
                },
                "rate_limited": asdict(limited) if limited else None,
            }
            if profiler is not None and args.profile is not None:
                profile_text = write_profile(profiler, args.profile)
    print()
    print(render_table(figures))
    if profile_text:
        print()
        print(profile_text)
    path = write_report("download", data, figures)
    print(f"\nwrote {path}")
    return 0 if all(f.passed is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
