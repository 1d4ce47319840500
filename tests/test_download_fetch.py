"""Fetching one result file (jobtracker.fetch) against the sandbox: resume, wrong bodies, 416.

Real HTTP to the sandbox on 127.0.0.1 (API) and 127.0.0.2 (storage), real SQLite; no mocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests
from sqlalchemy import select

from jobtracker.client import API_KEY_HEADER, BatchClient, RetryPolicy
from jobtracker.fetch import FetchTask, fetch, part_path
from jobtracker.layout import file_path
from jobtracker.sandbox import FaultConfig, RequestRecord, Sandbox
from jobtracker.schema import downloads
from jobtracker.tracker import Tracker

KEY = "sandbox-key"
FAST = RetryPolicy(base_s=0.01, floor_s=0.01, budget_s=10)
BIG = 5_000_000
CUT = 1_234_567


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sandbox_clock(sb: Sandbox) -> Callable[[], datetime]:
    return lambda: datetime.fromtimestamp(sb.now(), UTC)


def add_completed(sb: Sandbox, current: int, legacy: int) -> tuple[list[str], list[str]]:
    """Jobs that have all COMPLETED by the time this returns: (current ids, legacy ids)."""
    kwargs: dict[str, Any] = {"fail_fraction": 0.0, "queue_s": (1.0, 2.0), "run_s": (1.0, 2.0)}
    cur = sb.add_jobs(current, legacy_fraction=0.0, **kwargs) if current else []
    old = sb.add_jobs(legacy, legacy_fraction=1.0, **kwargs) if legacy else []
    sb.clock.advance(600)
    return cur, old


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox(seed=21, artifact_bytes=BIG) as sandbox:
        yield sandbox


@pytest.fixture
def client(sb: Sandbox) -> Iterator[BatchClient]:
    with BatchClient(sb.base_url, KEY, max_rps=1000, retry=FAST) as c:
        yield c


@pytest.fixture
def tracker(sqlite_url: str, sb: Sandbox) -> Iterator[Tracker]:
    with Tracker(sqlite_url, clock=sandbox_clock(sb)) as t:
        t.upgrade()
        yield t


def poll(tracker: Tracker, client: BatchClient, legacy_ids: list[str]) -> None:
    tracker.track(legacy_ids)
    summary = tracker.poll(client)
    assert summary.outcome == "ok", summary


def row(tracker: Tracker, job_id: str, kind: str) -> Any:
    with tracker.read() as conn:
        return conn.execute(
            select(downloads).where(downloads.c.job_id == job_id, downloads.c.kind == kind)
        ).one()


def body_of(sb: Sandbox, job_id: str, kind: str) -> bytes:
    """The full result body, fetched out of band from a freshly signed storage URL."""
    response = requests.get(sb.signed_url(job_id, kind), timeout=30)
    assert response.status_code == 200
    return response.content


def artifact_requests(sb: Sandbox, job_id: str) -> list[RequestRecord]:
    """Requests for a job's artifacts, on the API host or the storage host."""
    return [
        r
        for r in sb.requests
        if job_id in r.path and r.path.endswith(("/artifacts", "/job-artifacts.zip"))
    ]


def resign(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


# --- resume ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["current", "legacy"])
def test_partial_part_file_is_resumed_with_a_range_request(
    sb: Sandbox, client: BatchClient, tracker: Tracker, tmp_path: Path, shape: str
) -> None:
    cur, old = add_completed(sb, *((1, 0) if shape == "current" else (0, 1)))
    (job_id,) = cur or old
    poll(tracker, client, old)
    dest = tmp_path / "results"
    body = body_of(sb, job_id, "artifacts")
    assert len(body) == BIG == sb.expected_size(job_id, "artifacts")
    part = part_path(file_path(dest, job_id, "artifacts"))
    assert part.name == ".artifacts.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(body[:CUT])
    sb.clear_log()

    summary = tracker.download(client, dest=dest, kind="artifacts")

    assert summary.files_done == 1, summary.failures
    gets = artifact_requests(sb, job_id)
    assert len(gets) == 1, gets
    headers = {k.lower(): v for k, v in gets[0].headers.items()}
    assert headers.get("range") == f"bytes={CUT}-"
    assert gets[0].status == 206
    assert gets[0].role == ("api" if shape == "current" else "storage")
    done = row(tracker, job_id, "artifacts")
    assert done.state == "done"
    assert done.sha256 == sb.expected_sha256(job_id, "artifacts") == sha256(body)
    assert done.size_bytes == BIG
    target = Path(done.local_path)
    assert target == file_path(dest, job_id, "artifacts")
    assert sha256(target.read_bytes()) == done.sha256
    assert not part.exists()


def test_cut_short_bodies_keep_the_part_file_and_resume_until_complete(
    sb: Sandbox, client: BatchClient, tmp_path: Path
) -> None:
    _, (job_id,) = add_completed(sb, 0, 1)
    target = file_path(tmp_path / "results", job_id, "artifacts")
    task = FetchTask(job_id, "artifacts", sb.signed_url(job_id, "artifacts"), True, target)
    part = part_path(target)
    sb.faults = FaultConfig(storage_rate=1.0, kinds=("truncated",))

    cut = fetch(client, task)

    assert cut.error is not None
    assert cut.error.startswith("cut short"), cut.error
    assert cut.sha256 is None
    assert not cut.expired
    assert not target.exists(), "a truncated body must never reach the target path"
    kept = part.stat().st_size
    assert 0 < kept < BIG
    # Each try asks for the rest of what the .part holds (a chunk cut mid-read is lost, so an
    # offset may repeat, but never goes back).
    ranges = [r.headers.get("Range") for r in sb.requests if r.role == "storage"]
    assert len(ranges) == 3
    assert ranges[0] is None
    offsets = [int(str(r).removeprefix("bytes=").removesuffix("-")) for r in ranges[1:]]
    assert 0 < offsets[0] <= offsets[1] <= kept

    sb.faults = FaultConfig()
    assert part.read_bytes() == body_of_range(sb, job_id, kept)
    sb.clear_log()
    whole = fetch(client, task)

    assert whole.error is None, whole.error
    assert whole.sha256 == sb.expected_sha256(job_id, "artifacts")
    assert whole.size == BIG
    assert whole.bytes_read == BIG - kept
    assert [r.headers.get("Range") for r in sb.requests] == [f"bytes={kept}-"]
    assert sha256(target.read_bytes()) == whole.sha256
    assert not part.exists()


def body_of_range(sb: Sandbox, job_id: str, length: int) -> bytes:
    response = requests.get(
        sb.signed_url(job_id, "artifacts"), headers={"Range": f"bytes=0-{length - 1}"}, timeout=30
    )
    assert response.status_code == 206
    return response.content


# --- wrong bodies ---------------------------------------------------------------------------


def assert_nothing_written(task: FetchTask) -> None:
    assert not task.path.exists()
    assert not part_path(task.path).exists()


def test_bad_signature_gets_an_xml_error_that_is_never_a_file(
    sb: Sandbox, client: BatchClient, tmp_path: Path
) -> None:
    _, (job_id,) = add_completed(sb, 0, 1)
    url = resign(sb.signed_url(job_id, "artifacts"), Signature="AAAA" + "A" * 40)
    task = FetchTask(job_id, "artifacts", url, True, file_path(tmp_path, job_id, "artifacts"))

    outcome = fetch(client, task)

    assert outcome.error is not None
    assert "403" in outcome.error
    assert "SignatureDoesNotMatch" in outcome.error
    assert outcome.expired  # the downloader refreshes the job's URLs on this
    assert outcome.sha256 is None
    assert outcome.size == 0
    assert_nothing_written(task)
    (record,) = sb.requests
    assert record.role == "storage"
    assert record.status == 403
    assert API_KEY_HEADER.lower() not in {k.lower() for k in record.headers}


@pytest.mark.parametrize(
    ("served", "kind", "message"),
    [
        ("predictions", "artifacts", "not a zip"),
        ("errors", "artifacts", "not a zip"),
        ("artifacts", "predictions", "not JSON"),
    ],
)
def test_a_body_of_the_wrong_type_is_a_failed_attempt(
    sb: Sandbox, client: BatchClient, tmp_path: Path, served: str, kind: str, message: str
) -> None:
    _, (job_id,) = add_completed(sb, 0, 1)
    url = sb.signed_url(job_id, served)
    task = FetchTask(job_id, kind, url, True, file_path(tmp_path, job_id, kind))

    outcome = fetch(client, task)

    assert outcome.error is not None
    assert message in outcome.error
    assert not outcome.expired
    assert outcome.sha256 is None
    assert_nothing_written(task)
    assert [r.status for r in sb.requests] == [200]


def test_a_wrong_body_leaves_an_earlier_good_file_untouched(
    sb: Sandbox, client: BatchClient, tmp_path: Path
) -> None:
    _, (job_id,) = add_completed(sb, 0, 1)
    target = file_path(tmp_path, job_id, "artifacts")
    good = FetchTask(job_id, "artifacts", sb.signed_url(job_id, "artifacts"), True, target)
    assert fetch(client, good).error is None
    before = sha256(target.read_bytes())

    bad = FetchTask(job_id, "artifacts", sb.signed_url(job_id, "predictions"), True, target)
    outcome = fetch(client, bad)

    assert outcome.error is not None
    assert sha256(target.read_bytes()) == before == sb.expected_sha256(job_id, "artifacts")
    assert not part_path(target).exists()


def test_api_endpoint_of_an_unfinished_job_is_a_400_not_a_file(
    sb: Sandbox, client: BatchClient, tmp_path: Path
) -> None:
    job_id = sb.add_job(queue_s=1000)  # still queued
    for kind in ("predictions", "artifacts"):
        task = FetchTask(
            job_id,
            kind,
            client.job_file_url(job_id, kind),
            False,
            file_path(tmp_path, job_id, kind),
        )
        outcome = fetch(client, task)
        assert outcome.error is not None
        assert "HTTP 400" in outcome.error
        assert "COMPLETED" in outcome.error
        assert not outcome.expired
        assert_nothing_written(task)
    assert [(r.role, r.status) for r in sb.requests] == [("api", 400), ("api", 400)]
    assert all(r.headers.get(API_KEY_HEADER) == KEY for r in sb.requests)


def test_downloader_records_a_400_as_a_failed_attempt_never_done(
    sb: Sandbox, client: BatchClient, tracker: Tracker, tmp_path: Path
) -> None:
    (good, broken), _ = add_completed(sb, 2, 0)
    poll(tracker, client, [])
    sb.set_final(broken, "FAILED")  # the API now refuses its result files with a 400
    dest = tmp_path / "results"

    summary = tracker.download(client, dest=dest)

    assert summary.outcome == "partial"
    assert summary.files_failed >= 2
    for kind in ("predictions", "artifacts"):
        ok = row(tracker, good, kind)
        assert ok.state == "done"
        assert ok.sha256 == sb.expected_sha256(good, kind)
        bad = row(tracker, broken, kind)
        assert bad.state != "done"
        assert bad.sha256 is None
        assert bad.local_path is None
        assert bad.size_bytes is None
        assert bad.attempts >= 1
        assert "HTTP 400" in bad.last_error
        assert not file_path(dest, broken, kind).exists()
        assert not part_path(file_path(dest, broken, kind)).exists()


# --- a .part file that already holds the whole body -----------------------------------------


def test_a_complete_part_file_is_finished_not_refused_forever(
    sb: Sandbox, client: BatchClient, tracker: Tracker, tmp_path: Path
) -> None:
    # What a downloader killed between the last write and the rename leaves behind.
    (job_id,), _ = add_completed(sb, 1, 0)
    poll(tracker, client, [])
    dest = tmp_path / "results"
    part = part_path(file_path(dest, job_id, "artifacts"))
    part.parent.mkdir(parents=True)
    part.write_bytes(body_of(sb, job_id, "artifacts"))

    for _ in range(3):
        tracker.download(client, dest=dest, kind="artifacts")

    done = row(tracker, job_id, "artifacts")
    assert done.state == "done", done.last_error
    assert done.sha256 == sb.expected_sha256(job_id, "artifacts")
