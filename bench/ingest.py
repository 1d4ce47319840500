"""Ingest benchmark: jobtracker's import against a plain sqlite3 loader, streaming memory, reads.

Run by hand (not a test); the figures go into the README::

    .venv/bin/python bench/ingest.py                        # 100,000 jobs + the 1,000,000 job file
    .venv/bin/python bench/ingest.py --jobs 10000 --big 50000
    .venv/bin/python bench/ingest.py --skip-big --keep --workdir /tmp/jt-bench

In one run it measures:

1. ``Tracker.ingest(payloads)`` of ``--jobs`` generated current-shape responses beside a plain
   ``sqlite3`` loader that writes the same rows into the same tables (a database migrated by
   jobtracker, the same pragmas, 2000 jobs per transaction), starting from the same decoded
   dicts. Target: jobtracker >= 0.7x the plain loader's jobs/s. Then the same data again through
   ``Tracker.ingest`` (nothing changes). Target: >= 2x faster than the first import. Both
   databases must then hold the same rows (counts, and contents apart from the tracker's clock).
2. ``jobtracker import FILE`` of a ``--big`` job JSON Lines file as a subprocess: peak RSS
   (target < 300 MB) and wall time.
3. Reads on that database (median of 5 after a warm-up): the first page of outstanding downloads,
   jobs by status, model and creation time (each < 50 ms), run-time statistics by model (< 1 s).

Prints a table and writes it as JSON to ``bench/out/ingest.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import (
    DAY_MS,
    RANGE_DAYS,
    RANGE_END_MS,
    SEED,
    Figure,
    freeze_gc,
    iter_payloads,
    jobtracker_cli,
    remove_sqlite,
    render_table,
    run_child,
    sqlite_dt,
    sqlite_ms,
    sqlite_url,
    table_counts,
    time_call,
    workdir,
    write_jsonl,
    write_report,
)

from jobtracker import Tracker
from jobtracker.parse import PARSER_VERSION

TABLES = ("jobs", "job_configs", "job_inputs", "job_status_history", "downloads")
BATCH = 2000
RATIO_TARGET = 0.7
REIMPORT_TARGET = 2.0
RSS_TARGET_MB = 300.0
QUERY_TARGET_MS = 50.0
STATS_TARGET_MS = 1000.0

# Columns set from the tracker's own clock ("now"): equal only in format between two loads.
CLOCK_COLUMNS = {
    "jobs": {"first_seen_at", "last_changed_at", "terminal_seen_at", "last_polled_at"},
    "job_status_history": {"observed_at"},
    "downloads": {"created_at", "updated_at"},
}
# Surrogate keys: not part of what a job's rows say.
IGNORED_COLUMNS = {"job_status_history": {"id"}}


# --- the plain loader -------------------------------------------------------------------------

_JOB_COLUMNS = (
    "job_id",
    "status",
    "job_type",
    "response_shape",
    "created_at",
    "started_at",
    "ended_at",
    "run_time_s",
    "queue_time_s",
    "error_message",
    "num_predictions",
    "num_errors",
    "callback_url",
    "notify",
    "raw_payload",
    "payload_hash",
    "request_hash",
    "parser_version",
    "first_seen_at",
    "last_changed_at",
    "terminal_seen_at",
    "last_polled_at",
)


def _insert(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


INSERT_JOB = _insert("jobs", _JOB_COLUMNS)
INSERT_CONFIG = _insert("job_configs", ("job_id", "model", "config", "run_time_s"))
INSERT_INPUT = _insert("job_inputs", ("job_id", "kind", "position", "value", "detail"))
INSERT_HISTORY = _insert(
    "job_status_history", ("job_id", "from_status", "to_status", "provider_at", "observed_at")
)
INSERT_DOWNLOAD = _insert(
    "downloads",
    (
        "job_id",
        "kind",
        "state",
        "source_url",
        "url_expires_at",
        "attempts",
        "created_at",
        "updated_at",
    ),
)


def _json(value: Any) -> str:
    # What jobtracker's engine writes into a JSON column (jobtracker.db._json_serializer).
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def plain_load(path: Path, payloads: Sequence[dict[str, Any]], batch_size: int = BATCH) -> None:
    """Write the rows ``Tracker.ingest`` writes for new current-shape jobs, with bare sqlite3.

    The database must exist at jobtracker's head revision. One ``BEGIN IMMEDIATE`` transaction
    per ``batch_size`` jobs, as jobtracker does; no parsing beyond reading the dicts, no lookup
    of existing rows (the database is known to be empty).
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        for start in range(0, len(payloads), batch_size):
            now = sqlite_dt(datetime.now(UTC))
            job_rows: list[tuple[Any, ...]] = []
            config_rows: list[tuple[Any, ...]] = []
            input_rows: list[tuple[Any, ...]] = []
            history_rows: list[tuple[Any, ...]] = []
            download_rows: list[tuple[Any, ...]] = []
            for payload in payloads[start : start + batch_size]:
                job_id = payload["job_id"]
                request = payload.get("request") or {}
                state = payload["state"]
                status = state["status"]
                created = state.get("created_timestamp_ms")
                started = state.get("started_timestamp_ms")
                ended = state.get("ended_timestamp_ms")
                begin = started if started is not None else created
                run_time = None if begin is None or ended is None else (ended - begin) / 1000
                queue_time = (
                    None if created is None or started is None else (started - created) / 1000
                )
                raw = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                digest = hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()
                # jobtracker hashes the request as received (store._Incoming.request_hash).
                request_digest = (
                    hashlib.blake2b(
                        json.dumps(payload["request"], separators=(",", ":")).encode(),
                        digest_size=16,
                    ).hexdigest()
                    if payload.get("request") is not None
                    else ""
                )
                terminal = status in ("COMPLETED", "FAILED")
                job_rows.append(
                    (
                        job_id,
                        status,
                        payload.get("type"),
                        "current",
                        sqlite_ms(created),
                        sqlite_ms(started),
                        sqlite_ms(ended),
                        run_time,
                        queue_time,
                        state.get("message"),
                        state.get("num_predictions"),
                        state.get("num_errors"),
                        request.get("callback_url"),
                        request.get("notify"),
                        raw,
                        digest,
                        request_digest,
                        PARSER_VERSION,
                        now,
                        now,
                        now if terminal else None,
                        None,
                    )
                )
                for model, config in (request.get("models") or {}).items():
                    config_rows.append((job_id, model, _json(config or {}), run_time))
                for pos, url in enumerate(request.get("urls") or ()):
                    input_rows.append((job_id, "url", pos, url, None))
                for pos, file in enumerate(request.get("files") or ()):
                    name = file.get("filename")
                    input_rows.append(
                        (job_id, "file", pos, name if isinstance(name, str) else None, _json(file))
                    )
                for pos, text in enumerate(request.get("text") or ()):
                    input_rows.append((job_id, "text", pos, text, None))
                if status == "QUEUED":
                    provider_at = created
                elif status == "IN_PROGRESS":
                    provider_at = started
                else:
                    provider_at = ended
                history_rows.append((job_id, None, status, sqlite_ms(provider_at), now))
                if status == "COMPLETED":
                    for kind in ("predictions", "artifacts"):
                        download_rows.append((job_id, kind, "pending", None, None, 0, now, now))
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT_JOB, job_rows)
            conn.executemany(INSERT_CONFIG, config_rows)
            conn.executemany(INSERT_INPUT, input_rows)
            conn.executemany(INSERT_HISTORY, history_rows)
            conn.executemany(INSERT_DOWNLOAD, download_rows)
            conn.execute("COMMIT")
    finally:
        conn.close()


def expected_counts(payloads: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The rows a fresh import of ``payloads`` must produce, per table."""
    counts = dict.fromkeys(TABLES, 0)
    for p in payloads:
        request = p["request"]
        counts["jobs"] += 1
        counts["job_configs"] += len(request["models"])
        counts["job_inputs"] += len(request["urls"]) + len(request["files"]) + len(request["text"])
        counts["job_status_history"] += 1
        counts["downloads"] += 2 if p["state"]["status"] == "COMPLETED" else 0
    return counts


# --- verification -----------------------------------------------------------------------------


class BenchError(Exception):
    """The benchmark cannot vouch for its figures (different rows, a failed subprocess...)."""


def compare_contents(tracker_db: Path, plain_db: Path) -> None:
    """Raise unless both databases hold the same rows in the five tables.

    Clock columns are compared by NULL-ness and text length only (each load has its own "now").
    """
    conn = sqlite3.connect(tracker_db)
    try:
        conn.execute("ATTACH DATABASE ? AS plain", (str(plain_db),))
        schema = "SELECT type, name, sql FROM {}.sqlite_master ORDER BY type, name"
        if (
            conn.execute(schema.format("main")).fetchall()
            != conn.execute(schema.format("plain")).fetchall()
        ):
            raise BenchError(
                "the two databases have different schemas (did a migration change during the "
                "run?); run again"
            )
        for table in TABLES:
            exprs = []
            for row in conn.execute(f"PRAGMA main.table_info({table})"):
                column = str(row[1])
                if column in IGNORED_COLUMNS.get(table, set()):
                    continue
                if column in CLOCK_COLUMNS.get(table, set()):
                    exprs.append(f"typeof({column}) || ':' || coalesce(length({column}), '')")
                else:
                    exprs.append(column)
            cols = ", ".join(exprs)
            for left, right in (("main", "plain"), ("plain", "main")):
                diff = conn.execute(
                    f"SELECT {cols} FROM {left}.{table} EXCEPT SELECT {cols} FROM {right}.{table} "
                    "LIMIT 1"
                ).fetchone()
                if diff is not None:
                    raise BenchError(
                        f"{table}: a row in the {left} database is not in the {right} one: "
                        f"{str(diff)[:400]}"
                    )
    finally:
        conn.close()


def check_counts(counts: dict[str, dict[str, int]]) -> None:
    """Raise unless every column of ``counts`` (one per database) agrees."""
    for table in TABLES:
        values = {name: c[table] for name, c in counts.items()}
        if len(set(values.values())) != 1:
            raise BenchError(f"row counts of {table} differ: {values}")


def render_counts(counts: dict[str, dict[str, int]]) -> str:
    names = list(counts)
    width = max(len(t) for t in TABLES)
    lines = ["table".ljust(width) + "".join(n.rjust(14) for n in names)]
    for table in TABLES:
        lines.append(table.ljust(width) + "".join(f"{counts[n][table]:>14,}" for n in names))
    return "\n".join(lines)


# --- the three parts --------------------------------------------------------------------------


def bench_ingest(
    wd: Path, jobs: int, figures: list[Figure], report: dict[str, Any]
) -> tuple[Path, str]:
    """Part 1: Tracker.ingest against the plain loader, then the re-import."""
    start = time.perf_counter()
    payloads = list(iter_payloads(jobs, SEED))
    freeze_gc()
    gen_s = time.perf_counter() - start
    figures.append(Figure(f"generate {jobs:,} payloads", gen_s, "s", note=f"seed {SEED}"))
    print(f"generated {jobs:,} payloads in {gen_s:.1f} s", flush=True)

    plain_db, tracker_db = wd / "plain.db", wd / "tracker.db"
    for path in (plain_db, tracker_db):
        remove_sqlite(path)
        with Tracker(sqlite_url(path)) as migrator:
            migrator.upgrade()

    start = time.perf_counter()
    plain_load(plain_db, payloads)
    plain_s = time.perf_counter() - start
    print(f"plain sqlite3 loader: {plain_s:.2f} s", flush=True)

    with Tracker(sqlite_url(tracker_db)) as tracker:
        start = time.perf_counter()
        first = tracker.ingest(payloads)
        first_s = time.perf_counter() - start
        print(f"Tracker.ingest, first import: {first_s:.2f} s ({first.as_dict()})", flush=True)
        start = time.perf_counter()
        again = tracker.ingest(payloads)
        again_s = time.perf_counter() - start
        print(f"Tracker.ingest, re-import: {again_s:.2f} s ({again.as_dict()})", flush=True)

    if first.inserted != jobs or first.failed:
        raise BenchError(f"first import should insert {jobs} jobs: {first.as_dict()}")
    if again.unchanged != jobs:
        raise BenchError(f"re-import should leave all {jobs} jobs unchanged: {again.as_dict()}")

    counts = {
        "expected": expected_counts(payloads),
        "jobtracker": table_counts(tracker_db, TABLES),
        "plain": table_counts(plain_db, TABLES),
    }
    print("\nrow counts after both loads:\n" + render_counts(counts), flush=True)
    report["row_counts"] = counts
    check_counts(counts)
    compare_contents(tracker_db, plain_db)
    print("contents: identical (clock columns compared by format only)\n", flush=True)

    plain_rate, first_rate, again_rate = jobs / plain_s, jobs / first_s, jobs / again_s
    figures += [
        Figure("plain sqlite3 loader", plain_rate, "jobs/s", extra={"seconds": plain_s}),
        Figure("Tracker.ingest, first import", first_rate, "jobs/s", extra={"seconds": first_s}),
        Figure(
            "first import / plain loader",
            first_rate / plain_rate,
            "x",
            f">= {RATIO_TARGET:.2f}x",
            first_rate / plain_rate >= RATIO_TARGET,
            note="one measurement of each, same run, same decoded dicts, tables, pragmas, batches",
        ),
        Figure("Tracker.ingest, re-import", again_rate, "jobs/s", extra={"seconds": again_s}),
        Figure(
            "re-import speed-up over first",
            again_rate / first_rate,
            "x",
            f">= {REIMPORT_TARGET:.2f}x",
            again_rate / first_rate >= REIMPORT_TARGET,
        ),
    ]
    del payloads
    return tracker_db, f"{jobs:,}-job"


def bench_big_import(wd: Path, big: int, figures: list[Figure]) -> Path:
    """Part 2: stream ``big`` jobs to JSON Lines, import with the CLI, measure its peak RSS."""
    jsonl, db = wd / "big.jsonl", wd / "big.db"
    remove_sqlite(db)
    start = time.perf_counter()
    size = write_jsonl(jsonl, big, SEED)
    write_s = time.perf_counter() - start
    print(f"wrote {big:,} responses ({size / 1e6:,.0f} MB) in {write_s:.1f} s", flush=True)
    figures.append(
        Figure(f"write {big:,}-line JSON Lines", write_s, "s", extra={"bytes": size}),
    )

    cli = jobtracker_cli()
    url = sqlite_url(db)
    upgrade = run_child([*cli, "db", "upgrade", "--db", url], wd / "upgrade.log")
    if upgrade.returncode != 0:
        raise BenchError(f"`jobtracker db upgrade` failed; see {upgrade.log}")
    print(f"running: {' '.join([*cli, 'import', str(jsonl), '--db', url])}", flush=True)
    run = run_child([*cli, "import", str(jsonl), "--db", url], wd / "import.log")
    output = run.log.read_text(errors="replace").strip()
    print(output[-2000:], flush=True)
    if run.returncode != 0:
        raise BenchError(f"`jobtracker import` exited with {run.returncode}: {output[-500:]}")
    stored = table_counts(db, ("jobs",))["jobs"]
    if stored != big:
        raise BenchError(f"the imported database holds {stored} jobs, not {big}")
    rss_mb = run.max_rss_bytes / 1e6
    figures += [
        Figure(
            f"jobtracker import ({big:,} jobs): peak RSS",
            rss_mb,
            "MB",
            f"< {RSS_TARGET_MB:.0f} MB",
            rss_mb < RSS_TARGET_MB,
            note="MB = 10^6 bytes; ru_maxrss of the import process alone (see common.run_child)",
        ),
        Figure(f"jobtracker import ({big:,} jobs): wall time", run.wall_s, "s"),
        Figure(f"jobtracker import ({big:,} jobs): rate", big / run.wall_s, "jobs/s"),
    ]
    return db


def bench_queries(db: Path, label: str, figures: list[Figure]) -> None:
    """Part 3: read latencies, median of 5 runs after one warm-up."""
    middle = datetime.fromtimestamp((RANGE_END_MS - RANGE_DAYS * DAY_MS // 2) / 1000, tz=UTC)
    with Tracker(sqlite_url(db)) as tracker:
        cases: list[tuple[str, Callable[[], list[Any]], float | None]] = [
            (
                "outstanding_downloads(limit=100)",
                lambda: tracker.outstanding_downloads(limit=100),
                QUERY_TARGET_MS,
            ),
            (
                'jobs(status="FAILED", limit=100)',
                lambda: tracker.jobs(status="FAILED", limit=100),
                QUERY_TARGET_MS,
            ),
            (
                'jobs(model="face", limit=100)',
                lambda: tracker.jobs(model="face", limit=100),
                QUERY_TARGET_MS,
            ),
            (
                f"jobs(since={middle:%Y-%m-%d}, limit=100)",
                lambda: tracker.jobs(since=middle, limit=100),
                QUERY_TARGET_MS,
            ),
            (
                'run_time_stats(by="model")',
                lambda: tracker.run_time_stats(by="model"),
                STATS_TARGET_MS,
            ),
            ('run_time_stats(by="status")', lambda: tracker.run_time_stats(by="status"), None),
            ('run_time_stats(by="day")', lambda: tracker.run_time_stats(by="day"), None),
        ]
        for name, call, target in cases:
            rows = len(call())  # also the warm-up run
            if rows == 0:
                raise BenchError(f"{name} returned no rows on the {label} database")
            timing = time_call(call, runs=5, warmup=0)
            ms = timing.median * 1000
            print(f"{name}: {ms:.1f} ms median ({rows} rows)", flush=True)
            figures.append(
                Figure(
                    f"{name} [{label} db]",
                    ms,
                    "ms",
                    "" if target is None else f"< {target:.0f} ms",
                    None if target is None else ms < target,
                    extra={"rows": rows, **timing.as_dict()},
                )
            )


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Benchmark jobtracker's ingest against a plain sqlite3 loader, the memory of a "
            "streamed 1M-job import, and read latencies on the result."
        )
    )
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs for the ingest race")
    parser.add_argument("--big", type=int, default=1_000_000, help="jobs in the JSON Lines file")
    parser.add_argument(
        "--skip-big",
        action="store_true",
        help="skip the big import; time the reads on the --jobs database instead",
    )
    parser.add_argument("--workdir", type=Path, help="where databases and files go")
    parser.add_argument("--keep", action="store_true", help="keep the databases and files")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.big < 1:
        parser.error("--jobs and --big must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    figures: list[Figure] = []
    report: dict[str, Any] = {
        "args": {
            "jobs": args.jobs,
            "big": None if args.skip_big else args.big,
            "seed": SEED,
            "batch": BATCH,
            "command": " ".join(sys.argv),
        }
    }
    started = time.perf_counter()
    with workdir(args.workdir, keep=args.keep, prefix="jobtracker-bench-") as wd:
        print(f"workdir {wd}", flush=True)
        try:
            query_db, label = bench_ingest(wd, args.jobs, figures, report)
            if not args.skip_big:
                query_db = bench_big_import(wd, args.big, figures)
                label = f"{args.big:,}-job"
            bench_queries(query_db, label, figures)
        except BenchError as exc:
            print(f"\nBENCHMARK INVALID: {exc}", file=sys.stderr)
            return 1
        finally:
            if args.workdir is not None and not args.keep:
                for name in ("plain.db", "tracker.db", "big.db"):
                    remove_sqlite(wd / name)
                for name in ("big.jsonl", "upgrade.log", "import.log"):
                    (wd / name).unlink(missing_ok=True)
    report["total_s"] = time.perf_counter() - started
    print("\n" + render_table(figures))
    targets = [f for f in figures if f.passed is not None]
    met = sum(1 for f in targets if f.passed)
    print(f"\n{met} of {len(targets)} targets met; total {report['total_s']:.0f} s")
    path = write_report("ingest", report, figures)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
