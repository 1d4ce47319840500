"""Writing parsed jobs through ``Tracker.ingest`` (``jobtracker.store``), SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from jobtracker.errors import AuthError, ParseError
from jobtracker.schema import downloads, job_configs, job_inputs, job_status_history, jobs
from jobtracker.sources import BadRecord, Record
from jobtracker.tracker import Tracker

MakeTracker = Callable[..., Tracker]
Sample = Callable[[str], Any]

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TABLES = (jobs, job_configs, job_inputs, job_status_history, downloads)


def ms(when: datetime) -> int:
    return (when - EPOCH) // timedelta(milliseconds=1)


def current_payload(
    job_id: str,
    status: str,
    *,
    created: datetime = T0,
    started: datetime | None = None,
    ended: datetime | None = None,
    models: Sequence[str] = ("face",),
    urls: Sequence[str] = ("https://inputs.example.com/a.mp4",),
    predictions: int | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    state: dict[str, Any] = {"status": status, "created_timestamp_ms": ms(created)}
    if started is not None:
        state["started_timestamp_ms"] = ms(started)
    if ended is not None:
        state["ended_timestamp_ms"] = ms(ended)
    if predictions is not None:
        state["num_predictions"] = predictions
        state["num_errors"] = 0
    if message is not None:
        state["message"] = message
    return {
        "job_id": job_id,
        "type": "INFERENCE",
        "request": {
            "models": {name: {"granularity": "word"} for name in models},
            "urls": list(urls),
            "files": [],
            "text": [],
            "callback_url": None,
            "notify": False,
        },
        "state": state,
    }


def signed_url(name: str, expires: datetime, signature: str) -> str:
    return (
        f"https://storage.googleapis.com/results/abc/{name}?Expires={int(expires.timestamp())}"
        f"&GoogleAccessId=svc%40example.iam.gserviceaccount.com&Signature={signature}"
    )


def legacy_payload(
    status: str,
    *,
    created: datetime = T0,
    ended: datetime | None = None,
    expires: datetime = T0 + timedelta(days=7),
    signature: str = "sig1%2Fabc%3D%3D",
    message: str | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "status": status,
        "creation_timestamp": int(created.timestamp()),
        "request": {
            "models": {"face": {"fps_pred": 3.0}},
            "urls": ["https://inputs.example.com/video.mp4"],
        },
    }
    if ended is not None:
        payload["completion_timestamp"] = int(ended.timestamp())
    if status == "COMPLETED":
        payload["completed"] = {
            "num_errors": 0,
            "num_predictions": 20,
            "predictions_url": signed_url("job-predictions.json", expires, signature),
            "artifacts_url": signed_url("job-artifacts.zip", expires, signature),
            "errors_url": signed_url("job-errors.txt", expires, signature),
        }
    if message is not None:
        payload["failed"] = {"message": message}
    return payload


class Clock:
    """A settable clock for ``Tracker(clock=...)``."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def row_counts(tracker: Tracker) -> dict[str, int]:
    with tracker.read() as conn:
        return {
            table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in TABLES
        }


def history(tracker: Tracker, job_id: str) -> list[tuple[str | None, str]]:
    return [(h["from_status"], h["to_status"]) for h in tracker.job(job_id).history]


def download_rows(tracker: Tracker, job_id: str) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in tracker.job(job_id).downloads}


def mixed_batch() -> list[dict[str, Any]]:
    """Six current-shape jobs in every status, with 1-3 models and inputs each."""
    return [
        current_payload("c-queued", "QUEUED", models=("face",)),
        current_payload("c-running", "IN_PROGRESS", started=T0 + timedelta(seconds=5)),
        current_payload(
            "c-done",
            "COMPLETED",
            started=T0 + timedelta(seconds=2),
            ended=T0 + timedelta(seconds=12),
            models=("face", "prosody"),
            urls=("https://inputs.example.com/1.mp4", "https://inputs.example.com/2.mp4"),
            predictions=4,
        ),
        current_payload(
            "c-done-2",
            "COMPLETED",
            started=T0 + timedelta(seconds=1),
            ended=T0 + timedelta(seconds=4),
            models=("face", "prosody", "burst"),
            predictions=1,
        ),
        current_payload(
            "c-failed",
            "FAILED",
            started=T0 + timedelta(seconds=1),
            ended=T0 + timedelta(seconds=2),
            message="bad input",
        ),
        current_payload("c-failed-2", "FAILED", ended=T0 + timedelta(seconds=9)),
    ]


# --- ingest --------------------------------------------------------------------------------


def test_upgrade_then_ingest_both_shapes(db_url: str, core_make_tracker: MakeTracker) -> None:
    tracker = core_make_tracker(db_url, clock=Clock(T0 + timedelta(hours=1)))
    assert tracker.current_revision() == tracker.head_revision()

    legacy = legacy_payload("COMPLETED", ended=T0 + timedelta(seconds=3))
    current = current_payload(
        "cur-1",
        "COMPLETED",
        started=T0 + timedelta(milliseconds=83),
        ended=T0 + timedelta(milliseconds=557),
        models=("face", "prosody"),
        predictions=10,
    )
    stats = tracker.ingest([legacy], job_id="legacy-1")
    assert (stats.received, stats.inserted, stats.failed) == (1, 1, 0)
    stats = tracker.ingest([current])
    assert (stats.received, stats.inserted, stats.failed) == (1, 1, 0)

    old = tracker.job("legacy-1")
    assert old.response_shape == "legacy"
    assert old.status == "COMPLETED"
    assert old.run_time_s == 3.0
    assert old.queue_time_s is None
    assert old.started_at is None
    assert old.models == ["face"]
    assert old.configs == {"face": {"fps_pred": 3.0}}
    assert old.urls == ["https://inputs.example.com/video.mp4"]
    assert old.num_predictions == 20

    new = tracker.job("cur-1")
    assert new.response_shape == "current"
    assert new.job_type == "INFERENCE"
    assert new.run_time_s == 0.474
    assert new.queue_time_s == 0.083
    assert new.models == ["face", "prosody"]
    assert new.num_predictions == 10
    assert tracker.run_time("cur-1") == 0.474
    assert row_counts(tracker) == {
        "jobs": 2,
        "job_configs": 3,
        "job_inputs": 2,
        "job_status_history": 2,
        "downloads": 5,
    }


def test_ingest_the_sample_responses(
    db_url: str, core_make_tracker: MakeTracker, core_sample: Sample
) -> None:
    tracker = core_make_tracker(db_url)
    tracker.ingest([core_sample("legacy/completed.json")], job_id="legacy-1")
    tracker.ingest(core_sample("current/api-list.json"))
    tracker.ingest([core_sample("legacy/failed.json")], job_id="legacy-failed")

    assert tracker.run_time("legacy-1") == 3.0
    assert tracker.run_time("job_id") == 0.474
    assert tracker.run_time("legacy-failed") == 2.0
    assert tracker.job("legacy-failed").error_message == (
        "user 'abcde' has exceeded their usage limit"
    )
    assert tracker.job("job_id").files == [
        {"filename": "filename", "md5sum": "md5sum", "content_type": "content_type"}
    ]
    outstanding = tracker.outstanding_downloads()
    assert sorted((d.job_id, d.kind) for d in outstanding) == [
        ("job_id", "artifacts"),
        ("job_id", "predictions"),
        ("legacy-1", "artifacts"),
        ("legacy-1", "errors"),
        ("legacy-1", "predictions"),
    ]


def test_same_data_twice_changes_nothing(db_url: str, core_make_tracker: MakeTracker) -> None:
    clock = Clock(T0)
    tracker = core_make_tracker(db_url, clock=clock)
    batch = [*mixed_batch(), legacy_payload("COMPLETED", ended=T0 + timedelta(seconds=3))]
    legacy_id = "legacy-x"

    first = tracker.ingest(batch[:-1])
    first_legacy = tracker.ingest(batch[-1:], job_id=legacy_id)
    assert (first.inserted, first.updated, first.unchanged) == (6, 0, 0)
    assert first_legacy.inserted == 1
    counts = row_counts(tracker)
    assert counts == {
        "jobs": 7,
        "job_configs": 10,
        "job_inputs": 8,
        "job_status_history": 7,
        "downloads": 7,  # 2 per completed current job, 3 for the legacy one
    }

    clock.now = T0 + timedelta(hours=5)
    again = tracker.ingest(copy.deepcopy(batch[:-1]))
    again_legacy = tracker.ingest(copy.deepcopy(batch[-1:]), job_id=legacy_id)
    assert (again.received, again.inserted, again.updated, again.unchanged) == (6, 0, 0, 6)
    assert (again_legacy.inserted, again_legacy.updated, again_legacy.unchanged) == (0, 0, 1)
    assert again.stale == 0
    assert row_counts(tracker) == counts
    for row in tracker.jobs():
        assert row.last_changed_at == T0
        assert row.first_seen_at == T0


def test_key_order_does_not_make_a_payload_new(db_url: str, core_make_tracker: MakeTracker) -> None:
    tracker = core_make_tracker(db_url)
    payload = current_payload("j", "COMPLETED", ended=T0 + timedelta(seconds=1))
    reordered = json.loads(json.dumps(payload, sort_keys=True))
    reordered = dict(reversed(list(reordered.items())))
    tracker.ingest([payload])
    stats = tracker.ingest([reordered])
    assert (stats.updated, stats.unchanged) == (0, 1)


def test_status_never_goes_backwards(db_url: str, core_make_tracker: MakeTracker) -> None:
    clock = Clock(T0)
    tracker = core_make_tracker(db_url, clock=clock)
    done = current_payload(
        "j1", "COMPLETED", started=T0, ended=T0 + timedelta(seconds=7), predictions=3
    )
    tracker.ingest([done])

    clock.now = T0 + timedelta(minutes=1)
    stale = current_payload("j1", "IN_PROGRESS", started=T0)
    stats = tracker.ingest([stale])

    assert (stats.stale, stats.updated, stats.inserted, stats.unchanged) == (1, 0, 0, 0)
    detail = tracker.job("j1")
    assert detail.status == "COMPLETED"
    assert detail.run_time_s == 7.0
    assert detail.num_predictions == 3
    assert detail.last_changed_at == T0
    assert history(tracker, "j1") == [(None, "COMPLETED")]
    with tracker.read() as conn:
        stored = conn.execute(select(jobs.c.raw_payload)).scalar_one()
    assert stored == done


def test_lifecycle_history_downloads_and_clock(db_url: str, core_make_tracker: MakeTracker) -> None:
    clock = Clock(T0 + timedelta(minutes=1))
    tracker = core_make_tracker(db_url, clock=clock)
    created, started, ended = T0, T0 + timedelta(seconds=30), T0 + timedelta(seconds=90)

    stats = tracker.ingest([current_payload("j", "QUEUED", created=created)])
    assert stats.inserted == 1
    assert download_rows(tracker, "j") == {}

    clock.now = T0 + timedelta(minutes=2)
    stats = tracker.ingest([current_payload("j", "IN_PROGRESS", created=created, started=started)])
    assert stats.updated == 1
    assert download_rows(tracker, "j") == {}
    running = tracker.job("j")
    assert running.terminal_seen_at is None
    assert running.run_time_s is None

    clock.now = T0 + timedelta(minutes=3)
    done = current_payload("j", "COMPLETED", created=created, started=started, ended=ended)
    stats = tracker.ingest([done])
    assert stats.updated == 1

    detail = tracker.job("j")
    assert detail.history == [
        {
            "from_status": None,
            "to_status": "QUEUED",
            "provider_at": created,
            "observed_at": T0 + timedelta(minutes=1),
        },
        {
            "from_status": "QUEUED",
            "to_status": "IN_PROGRESS",
            "provider_at": started,
            "observed_at": T0 + timedelta(minutes=2),
        },
        {
            "from_status": "IN_PROGRESS",
            "to_status": "COMPLETED",
            "provider_at": ended,
            "observed_at": T0 + timedelta(minutes=3),
        },
    ]
    assert detail.run_time_s == 60.0
    assert detail.queue_time_s == 30.0
    assert detail.first_seen_at == T0 + timedelta(minutes=1)
    assert detail.last_changed_at == T0 + timedelta(minutes=3)
    assert detail.terminal_seen_at == T0 + timedelta(minutes=3)
    assert detail.last_polled_at is None
    rows = download_rows(tracker, "j")
    assert sorted(rows) == ["artifacts", "predictions"]
    for row in rows.values():
        assert row["state"] == "pending"
        assert row["source_url"] is None
        assert row["url_expires_at"] is None
        assert row["attempts"] == 0

    # The same answer again: nothing moves.
    clock.now = T0 + timedelta(minutes=4)
    assert tracker.ingest([copy.deepcopy(done)]).unchanged == 1
    assert tracker.job("j").last_changed_at == T0 + timedelta(minutes=3)

    # A changed answer for the finished job: last_changed_at moves, first/terminal stay.
    clock.now = T0 + timedelta(minutes=5)
    changed = current_payload(
        "j", "COMPLETED", created=created, started=started, ended=ended, predictions=9
    )
    assert tracker.ingest([changed]).updated == 1
    detail = tracker.job("j")
    assert detail.num_predictions == 9
    assert detail.first_seen_at == T0 + timedelta(minutes=1)
    assert detail.last_changed_at == T0 + timedelta(minutes=5)
    assert detail.terminal_seen_at == T0 + timedelta(minutes=3)
    assert len(detail.history) == 3
    assert len(detail.downloads) == 2


def test_a_job_first_seen_finished_is_terminal_at_once(
    db_url: str, core_make_tracker: MakeTracker
) -> None:
    tracker = core_make_tracker(db_url, clock=Clock(T0 + timedelta(days=1)))
    tracker.ingest([current_payload("f", "FAILED", ended=T0 + timedelta(seconds=4))])
    detail = tracker.job("f")
    assert detail.first_seen_at == T0 + timedelta(days=1)
    assert detail.terminal_seen_at == T0 + timedelta(days=1)
    assert detail.history == [
        {
            "from_status": None,
            "to_status": "FAILED",
            "provider_at": T0 + timedelta(seconds=4),
            "observed_at": T0 + timedelta(days=1),
        }
    ]
    # A failed job has no result files.
    assert detail.downloads == []


def test_legacy_completed_job_has_three_signed_downloads(
    db_url: str, core_make_tracker: MakeTracker
) -> None:
    tracker = core_make_tracker(db_url, clock=Clock(T0 + timedelta(hours=1)))
    expires = T0 + timedelta(days=7)
    tracker.ingest([legacy_payload("QUEUED")], job_id="L")
    assert download_rows(tracker, "L") == {}
    tracker.ingest([legacy_payload("FAILED", ended=T0, message="quota")], job_id="F")
    assert download_rows(tracker, "F") == {}

    tracker.ingest(
        [legacy_payload("COMPLETED", ended=T0 + timedelta(seconds=3), expires=expires)],
        job_id="L",
    )
    rows = download_rows(tracker, "L")
    assert sorted(rows) == ["artifacts", "errors", "predictions"]
    for kind, name in (
        ("predictions", "job-predictions.json"),
        ("artifacts", "job-artifacts.zip"),
        ("errors", "job-errors.txt"),
    ):
        assert rows[kind]["source_url"] == signed_url(name, expires, "sig1%2Fabc%3D%3D")
        assert rows[kind]["url_expires_at"] == expires
        assert rows[kind]["state"] == "pending"
    assert history(tracker, "L") == [(None, "QUEUED"), ("QUEUED", "COMPLETED")]


def test_refetched_legacy_job_refreshes_pending_download_urls(
    db_url: str, core_make_tracker: MakeTracker
) -> None:
    clock = Clock(T0)
    tracker = core_make_tracker(db_url, clock=clock)
    ended = T0 + timedelta(seconds=3)
    first_expiry, second_expiry = T0 + timedelta(days=7), T0 + timedelta(days=14)
    tracker.ingest(
        [legacy_payload("COMPLETED", ended=ended, expires=first_expiry, signature="old")],
        job_id="L",
    )
    # Pretend the predictions file was fetched already.
    with tracker.write() as conn:
        conn.execute(
            update(downloads)
            .where(downloads.c.job_id == "L", downloads.c.kind == "predictions")
            .values(state="done", local_path="/data/L/predictions.json")
        )

    clock.now = T0 + timedelta(days=8)
    refreshed = legacy_payload("COMPLETED", ended=ended, expires=second_expiry, signature="new")
    stats = tracker.ingest([refreshed], job_id="L")

    assert (stats.updated, stats.unchanged, stats.stale) == (1, 0, 0)
    rows = download_rows(tracker, "L")
    assert len(rows) == 3
    for kind, name in (("artifacts", "job-artifacts.zip"), ("errors", "job-errors.txt")):
        assert rows[kind]["source_url"] == signed_url(name, second_expiry, "new")
        assert rows[kind]["url_expires_at"] == second_expiry
        assert rows[kind]["state"] == "pending"
    # A file already fetched keeps the record of where it came from.
    done = rows["predictions"]
    assert done["state"] == "done"
    assert done["source_url"] == signed_url("job-predictions.json", first_expiry, "old")
    assert done["local_path"] == "/data/L/predictions.json"
    assert history(tracker, "L") == [(None, "COMPLETED")]
    assert tracker.job("L").last_changed_at == T0 + timedelta(days=8)


def test_bad_records_are_counted_reported_and_skipped(
    db_url: str, core_make_tracker: MakeTracker
) -> None:
    tracker = core_make_tracker(db_url)
    seen: list[ParseError] = []
    items: list[Any] = [
        current_payload("ok-1", "QUEUED"),
        {"job_id": "bad-status", "state": {"status": "EXPLODED"}},
        current_payload("ok-2", "COMPLETED", ended=T0 + timedelta(seconds=1)),
        "not a job",
        current_payload("ok-3", "FAILED"),
    ]
    stats = tracker.ingest(items, on_error=seen.append)

    assert (stats.received, stats.inserted, stats.failed) == (3, 3, 2)
    assert stats.as_dict()["received"] == 5
    assert [e.where for e in seen] == ["record 2", "record 4"]
    assert "state.status" in str(seen[0])
    assert seen[0].job_id == "bad-status"
    assert str(seen[1]).startswith("record 4: expected a job object")
    assert stats.errors == [str(e) for e in seen]
    assert sorted(r.job_id for r in tracker.jobs()) == ["ok-1", "ok-2", "ok-3"]


def test_bad_records_keep_their_file_location(db_url: str, core_make_tracker: MakeTracker) -> None:
    tracker = core_make_tracker(db_url)
    seen: list[ParseError] = []
    stats = tracker.ingest(
        [
            Record("jobs.jsonl:1", current_payload("a", "QUEUED")),
            BadRecord("jobs.jsonl:2", "invalid JSON: Expecting value at column 1"),
            Record("jobs.jsonl:3", {"job_id": "b", "state": {"status": 7}}),
            Record("jobs.jsonl:4", current_payload("c", "QUEUED")),
        ],
        on_error=seen.append,
    )
    assert (stats.inserted, stats.failed) == (2, 2)
    assert [e.where for e in seen] == ["jobs.jsonl:2", "jobs.jsonl:3"]
    assert str(seen[0]) == "jobs.jsonl:2: invalid JSON: Expecting value at column 1"
    assert str(seen[1]).startswith("jobs.jsonl:3: state.status: expected a status string")


def test_payload_without_job_id_fails_naming_the_option(
    db_url: str, core_make_tracker: MakeTracker
) -> None:
    tracker = core_make_tracker(db_url)
    seen: list[ParseError] = []
    stats = tracker.ingest(
        [legacy_payload("QUEUED"), current_payload("has-id", "QUEUED")], on_error=seen.append
    )
    assert (stats.inserted, stats.failed) == (1, 1)
    assert len(seen) == 1
    assert seen[0].where == "record 1"
    assert "--job-id" in str(seen[0])
    assert "job_id" in str(seen[0])
    assert [r.job_id for r in tracker.jobs()] == ["has-id"]


def test_auth_fault_stops_the_ingest(db_url: str, core_make_tracker: MakeTracker) -> None:
    tracker = core_make_tracker(db_url)
    fault = {"fault": {"faultstring": "Invalid ApiKey"}}
    with pytest.raises(AuthError):
        tracker.ingest([current_payload("a", "QUEUED"), fault])


def test_times_are_timezone_aware_utc_on_read(db_url: str, core_make_tracker: MakeTracker) -> None:
    # The tracker's clock may be in any zone: stored and read back as the same instant, in UTC.
    berlin_now = datetime(2024, 3, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    tracker = core_make_tracker(db_url, clock=Clock(berlin_now))
    created = datetime(2024, 2, 29, 23, 59, 59, 123000, tzinfo=UTC)
    tracker.ingest(
        [
            current_payload(
                "j",
                "COMPLETED",
                created=created,
                started=created + timedelta(milliseconds=877),
                ended=created + timedelta(seconds=61),
            )
        ]
    )
    tracker.ingest(
        [legacy_payload("COMPLETED", ended=T0 + timedelta(seconds=3), expires=T0)], job_id="L"
    )

    detail = tracker.job("j")
    values: list[datetime | None] = [
        detail.created_at,
        detail.started_at,
        detail.ended_at,
        detail.first_seen_at,
        detail.last_changed_at,
        detail.terminal_seen_at,
    ]
    values += [h["observed_at"] for h in detail.history]
    values += [h["provider_at"] for h in detail.history]
    values += [d.created_at for d in tracker.outstanding_downloads()]
    values += [d.url_expires_at for d in tracker.outstanding_downloads(kind="errors")]
    values += [r.created_at for r in tracker.jobs()]
    for value in values:
        assert value is not None
        assert value.tzinfo is not None
        assert value.utcoffset() == timedelta(0)
    assert detail.created_at == created
    assert detail.started_at == datetime(2024, 3, 1, 0, 0, 0, tzinfo=UTC)
    assert detail.ended_at == datetime(2024, 3, 1, 0, 1, 0, 123000, tzinfo=UTC)
    assert detail.first_seen_at == datetime(2024, 3, 1, 12, 30, tzinfo=UTC)
    assert detail.run_time_s == 60.123
    assert tracker.job("L").created_at == T0


def test_duplicates_in_one_batch_keep_the_most_advanced_status(
    db_url: str, core_make_tracker: MakeTracker
) -> None:
    tracker = core_make_tracker(db_url)
    ended = T0 + timedelta(seconds=20)
    batch = [
        current_payload("d", "QUEUED"),
        current_payload("d", "COMPLETED", started=T0, ended=ended, predictions=5),
        current_payload("d", "IN_PROGRESS", started=T0),
        current_payload("other", "QUEUED"),
    ]
    stats = tracker.ingest(batch)

    assert (stats.received, stats.inserted, stats.updated, stats.unchanged) == (4, 2, 0, 2)
    detail = tracker.job("d")
    assert detail.status == "COMPLETED"
    assert detail.num_predictions == 5
    assert detail.run_time_s == 20.0
    assert history(tracker, "d") == [(None, "COMPLETED")]
    assert len(detail.downloads) == 2


def test_duplicates_of_equal_rank_keep_the_later_answer(
    db_url: str, core_make_tracker: MakeTracker
) -> None:
    tracker = core_make_tracker(db_url)
    ended = T0 + timedelta(seconds=20)
    tracker.ingest(
        [
            current_payload("d", "COMPLETED", ended=ended, predictions=1),
            current_payload("d", "COMPLETED", ended=ended, predictions=2),
        ]
    )
    assert tracker.job("d").num_predictions == 2


def test_stale_answers_across_batches(db_url: str, core_make_tracker: MakeTracker) -> None:
    tracker = core_make_tracker(db_url)
    stats = tracker.ingest(
        [
            current_payload("s", "QUEUED"),
            current_payload("s", "COMPLETED", started=T0, ended=T0 + timedelta(seconds=2)),
            current_payload("s", "IN_PROGRESS", started=T0),
        ],
        batch_size=1,
    )
    assert (stats.inserted, stats.updated, stats.stale) == (1, 1, 1)
    assert tracker.job("s").status == "COMPLETED"
    assert history(tracker, "s") == [(None, "QUEUED"), ("QUEUED", "COMPLETED")]


def test_raw_payload_is_stored_as_received(db_url: str, core_make_tracker: MakeTracker) -> None:
    tracker = core_make_tracker(db_url)
    payload = current_payload("raw", "COMPLETED", ended=T0 + timedelta(seconds=1))
    payload["request"]["text"] = ["héllo wörld ✓", 'quote " and \\ backslash']
    payload["unknown_field"] = {"nested": [1, 2.5, None, True, {"deep": "ünïcode"}]}
    payload["state"]["num_predictions"] = 0
    tracker.ingest([copy.deepcopy(payload)])
    legacy = legacy_payload("COMPLETED", ended=T0 + timedelta(seconds=3))
    tracker.ingest([copy.deepcopy(legacy)], job_id="L")

    with tracker.read() as conn:
        raw = {row[0]: row[1] for row in conn.execute(text("SELECT job_id, raw_payload FROM jobs"))}
        typed = conn.execute(select(jobs.c.raw_payload).where(jobs.c.job_id == "raw")).scalar()
    decoded = {k: json.loads(v) if isinstance(v, str) else v for k, v in raw.items()}
    assert decoded == {"raw": payload, "L": legacy}
    assert typed == payload
    assert tracker.job("raw").text == ["héllo wörld ✓", 'quote " and \\ backslash']


def test_polled_ingest_stamps_last_polled_at(db_url: str, core_make_tracker: MakeTracker) -> None:
    clock = Clock(T0)
    tracker = core_make_tracker(db_url, clock=clock)
    queued = current_payload("p", "QUEUED")
    tracker.ingest([queued], polled=True)
    assert tracker.job("p").last_polled_at == T0

    clock.now = T0 + timedelta(minutes=1)
    assert tracker.ingest([copy.deepcopy(queued)], polled=True).unchanged == 1
    assert tracker.job("p").last_polled_at == T0 + timedelta(minutes=1)
    assert tracker.job("p").last_changed_at == T0

    # An import is not a poll: it leaves the poller's timestamp alone.
    clock.now = T0 + timedelta(minutes=2)
    assert tracker.ingest([current_payload("p", "IN_PROGRESS", started=T0)]).updated == 1
    detail = tracker.job("p")
    assert detail.last_polled_at == T0 + timedelta(minutes=1)
    assert detail.last_changed_at == T0 + timedelta(minutes=2)


def test_a_count_too_large_for_the_column_fails_only_its_record(
    db_url: str, core_make_tracker: MakeTracker
) -> None:
    tracker = core_make_tracker(db_url)
    seen: list[ParseError] = []
    huge = current_payload("huge", "COMPLETED", ended=T0, predictions=2**63)
    stats = tracker.ingest([current_payload("fine", "QUEUED"), huge], on_error=seen.append)
    assert (stats.inserted, stats.failed) == (1, 1)
    assert [r.job_id for r in tracker.jobs()] == ["fine"]


def test_a_status_change_keeps_the_request_rows_and_moves_the_run_time(
    db_url: str, core_make_tracker: MakeTracker
) -> None:
    tracker = core_make_tracker(db_url)
    models = ("face", "prosody")
    urls = ("https://inputs.example.com/a.mp4", "https://inputs.example.com/b.mp4")
    tracker.ingest([current_payload("r", "QUEUED", models=models, urls=urls)])
    done = current_payload(
        "r",
        "COMPLETED",
        started=T0 + timedelta(seconds=2),
        ended=T0 + timedelta(seconds=9),
        models=models,
        urls=urls,
    )
    assert tracker.ingest([done]).updated == 1

    def request_rows() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        with tracker.engine.connect() as conn:
            configs = conn.execute(
                text("SELECT model, run_time_s FROM job_configs WHERE job_id = 'r' ORDER BY model")
            ).all()
            inputs = conn.execute(
                text(
                    "SELECT kind, position, value FROM job_inputs "
                    "WHERE job_id = 'r' ORDER BY position"
                )
            ).all()
        return [tuple(r) for r in configs], [tuple(r) for r in inputs]

    configs, inputs = request_rows()
    assert configs == [("face", 7.0), ("prosody", 7.0)]
    assert inputs == [("url", 0, urls[0]), ("url", 1, urls[1])]

    # A different request (it should never happen, but a parser fix can change what is
    # extracted) rewrites the rows instead of keeping stale ones.
    changed = current_payload(
        "r",
        "COMPLETED",
        started=T0 + timedelta(seconds=2),
        ended=T0 + timedelta(seconds=9),
        models=("burst",),
        urls=urls[:1],
    )
    assert tracker.ingest([changed]).updated == 1
    configs, inputs = request_rows()
    assert configs == [("burst", 7.0)]
    assert inputs == [("url", 0, urls[0])]


def test_a_job_completed_again_after_failing_keeps_one_set_of_download_rows(
    db_url: str, core_make_tracker: MakeTracker
) -> None:
    # Equal ranks may replace each other (COMPLETED <-> FAILED); the download rows made at the
    # first completion must be upserted, not inserted twice.
    tracker = core_make_tracker(db_url)
    started, ended = T0 + timedelta(seconds=1), T0 + timedelta(seconds=5)
    tracker.ingest([current_payload("cf", "QUEUED")])
    tracker.ingest([current_payload("cf", "COMPLETED", started=started, ended=ended)])
    tracker.ingest(
        [current_payload("cf", "FAILED", started=started, ended=ended, message="late failure")]
    )
    stats = tracker.ingest(
        [current_payload("cf", "COMPLETED", started=started, ended=ended, predictions=3)]
    )
    assert stats.updated == 1
    with tracker.engine.connect() as conn:
        kinds = (
            conn.execute(text("SELECT kind FROM downloads WHERE job_id = 'cf' ORDER BY kind"))
            .scalars()
            .all()
        )
    assert kinds == ["artifacts", "predictions"]
    assert tracker.job("cf").status == "COMPLETED"
