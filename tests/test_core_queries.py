"""Reading jobs back: filters, details, run-time statistics, downloads and the SQL views."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text, update

from jobtracker.errors import UnknownJob
from jobtracker.queries import StatsRow
from jobtracker.schema import downloads
from jobtracker.tracker import Tracker

MakeTracker = Callable[..., Tracker]

BASE = datetime(2024, 3, 1, tzinfo=UTC)
NOW = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MODEL_SETS = (("face",), ("language", "prosody"), ("burst", "face", "prosody"))
# Expiry order (23, 15, 31) differs from job-id order, so ordering by expiry is visible.
LEGACY_EXPIRY = {15: NOW + timedelta(hours=3), 23: NOW - timedelta(hours=5)}
LEGACY_EXPIRY[31] = NOW + timedelta(hours=30)


def ms(when: datetime) -> int:
    return (when - EPOCH) // timedelta(milliseconds=1)


@dataclass(frozen=True)
class Spec:
    """What one job of the dataset is, so expected values are computed independently."""

    index: int
    status: str
    created: datetime
    started: datetime | None
    ended: datetime | None
    models: tuple[str, ...]
    legacy: bool
    predictions: int | None
    errors: int | None
    message: str | None

    @property
    def job_id(self) -> str:
        return f"legacy-{self.index:02d}" if self.legacy else f"job-{self.index:02d}"

    @property
    def run_time(self) -> float | None:
        if self.ended is None:
            return None
        start = self.started if self.started is not None else self.created
        return (ms(self.ended) - ms(start)) / 1000

    @property
    def queue_time(self) -> float | None:
        if self.started is None:
            return None
        return (ms(self.started) - ms(self.created)) / 1000

    @property
    def download_kinds(self) -> tuple[str, ...]:
        if self.status != "COMPLETED":
            return ()
        return (
            ("artifacts", "errors", "predictions") if self.legacy else ("artifacts", "predictions")
        )

    def payload(self) -> dict[str, Any]:
        request = {
            "models": {m: {"model": m, "n": self.index} for m in self.models},
            "urls": [f"https://inputs.example.com/{self.index}.mp4"],
        }
        if self.legacy:
            return self._legacy_payload(request)
        state: dict[str, Any] = {"status": self.status, "created_timestamp_ms": ms(self.created)}
        if self.started is not None:
            state["started_timestamp_ms"] = ms(self.started)
        if self.ended is not None:
            state["ended_timestamp_ms"] = ms(self.ended)
        if self.predictions is not None:
            state["num_predictions"] = self.predictions
            state["num_errors"] = self.errors
        if self.message is not None:
            state["message"] = self.message
        return {"job_id": self.job_id, "type": "INFERENCE", "request": request, "state": state}

    def _legacy_payload(self, request: dict[str, Any]) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "status": self.status,
            "creation_timestamp": int(self.created.timestamp()),
            "request": request,
        }
        if self.ended is not None:
            payload["completion_timestamp"] = int(self.ended.timestamp())
        if self.status == "COMPLETED":
            expires = int(LEGACY_EXPIRY[self.index].timestamp())
            payload["completed"] = {
                "num_predictions": self.predictions,
                "num_errors": self.errors,
                **{
                    f"{kind}_url": f"https://storage.example.com/{self.job_id}/{kind}"
                    f"?Expires={expires}&Signature=secret{self.index}"
                    for kind in ("predictions", "artifacts", "errors")
                },
            }
        if self.message is not None:
            payload["failed"] = {"message": self.message}
        return payload


def build_specs() -> list[Spec]:
    """40 jobs over four UTC days, every status, both shapes, three model sets."""
    specs = []
    for i in range(40):
        created = BASE + timedelta(hours=2 * i)
        status = ["COMPLETED"] * 6 + ["FAILED"] * 2 + ["IN_PROGRESS", "QUEUED"]
        status_i = status[i % 10]
        legacy = i % 8 == 7
        started: datetime | None = None
        ended: datetime | None = None
        if legacy:
            if status_i in ("COMPLETED", "FAILED"):
                ended = created + timedelta(seconds=1 + (i * 13) % 50)
        else:
            if status_i != "QUEUED":
                started = created + timedelta(milliseconds=1000 + 37 * i)
            if status_i in ("COMPLETED", "FAILED"):
                assert started is not None
                ended = started + timedelta(milliseconds=250 + (i * 7919) % 60000)
        done = status_i == "COMPLETED"
        specs.append(
            Spec(
                index=i,
                status=status_i,
                created=created,
                started=started,
                ended=ended,
                models=MODEL_SETS[i % 3],
                legacy=legacy,
                predictions=i if done else None,
                errors=i % 3 if done else None,
                message=f"failure {i}" if status_i == "FAILED" else None,
            )
        )
    return specs


SPECS = build_specs()
BY_ID = {s.job_id: s for s in SPECS}


def ingest_dataset(tracker: Tracker) -> None:
    stats = tracker.ingest([s.payload() for s in SPECS if not s.legacy])
    assert (stats.inserted, stats.failed) == (35, 0)
    for spec in SPECS:
        if spec.legacy:
            assert tracker.ingest([spec.payload()], job_id=spec.job_id).inserted == 1


@pytest.fixture
def tracker(db_url: str, core_make_tracker: MakeTracker) -> Tracker:
    """A migrated database holding the 40-job dataset; the tracker's clock stands at NOW."""
    made = core_make_tracker(db_url, clock=lambda: NOW)
    ingest_dataset(made)
    return made


def newest_first(specs: Sequence[Spec]) -> list[str]:
    return [s.job_id for s in sorted(specs, key=lambda s: (s.created, s.job_id), reverse=True)]


def nearest_rank(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(p * len(ordered)) - 1, 0)]


def expected_stats(groups: dict[str, list[float]]) -> list[tuple[str, int, float, float, float]]:
    return [
        (
            key,
            len(values),
            nearest_rank(values, 0.50),
            nearest_rank(values, 0.95),
            max(values),
        )
        for key, values in sorted(groups.items())
        if values
    ]


def as_tuples(
    rows: Sequence[StatsRow],
) -> list[tuple[str, int, float | None, float | None, float | None]]:
    return [(r.group, r.jobs, r.p50_s, r.p95_s, r.max_s) for r in rows]


# --- the dataset itself ------------------------------------------------------------------


def test_dataset_covers_what_the_tests_need() -> None:
    statuses = [s.status for s in SPECS]
    assert statuses.count("COMPLETED") == 24
    assert statuses.count("FAILED") == 8
    assert statuses.count("IN_PROGRESS") == 4
    assert statuses.count("QUEUED") == 4
    assert sorted(s.index for s in SPECS if s.legacy and s.status == "COMPLETED") == [15, 23, 31]
    assert len({s.created.date() for s in SPECS}) == 4


# --- jobs() --------------------------------------------------------------------------------


def test_jobs_newest_first_with_every_field(tracker: Tracker) -> None:
    rows = tracker.jobs(limit=None)
    assert [r.job_id for r in rows] == newest_first(SPECS)
    for row in rows:
        spec = BY_ID[row.job_id]
        assert row.status == spec.status
        assert row.models == sorted(spec.models)
        assert row.urls == [f"https://inputs.example.com/{spec.index}.mp4"]
        assert row.created_at == spec.created
        assert row.started_at == spec.started
        assert row.ended_at == spec.ended
        assert row.run_time_s == spec.run_time
        assert row.queue_time_s == spec.queue_time
        assert row.error_message == spec.message
        assert row.num_predictions == spec.predictions
        assert row.num_errors == spec.errors
        assert row.response_shape == ("legacy" if spec.legacy else "current")
        assert row.first_seen_at == NOW


def test_jobs_default_limit_and_explicit_limit(tracker: Tracker) -> None:
    assert len(tracker.jobs()) == 40
    assert [r.job_id for r in tracker.jobs(limit=5)] == newest_first(SPECS)[:5]
    assert [r.job_id for r in tracker.jobs(limit=1)] == ["legacy-39"]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("FAILED", {"FAILED"}),
        ("completed", {"COMPLETED"}),
        (["QUEUED", "IN_PROGRESS"], {"QUEUED", "IN_PROGRESS"}),
        (["FAILED", "COMPLETED"], {"FAILED", "COMPLETED"}),
    ],
)
def test_jobs_status_filter(tracker: Tracker, status: str | list[str], expected: set[str]) -> None:
    rows = tracker.jobs(status=status, limit=None)
    assert [r.job_id for r in rows] == newest_first([s for s in SPECS if s.status in expected])


def test_jobs_model_filter(tracker: Tracker) -> None:
    for model in ("burst", "face", "language", "prosody"):
        rows = tracker.jobs(model=model, limit=None)
        assert [r.job_id for r in rows] == newest_first([s for s in SPECS if model in s.models])
        assert all(model in r.models for r in rows)
    assert tracker.jobs(model="no-such-model") == []
    both = tracker.jobs(model="burst", status="FAILED", limit=None)
    expected = [s for s in SPECS if "burst" in s.models and s.status == "FAILED"]
    assert [r.job_id for r in both] == newest_first(expected)
    assert [r.job_id for r in both] == ["job-26", "job-17"]


def test_jobs_since_until(tracker: Tracker) -> None:
    day2, day3 = BASE + timedelta(days=1), BASE + timedelta(days=2)
    rows = tracker.jobs(since=day2, until=day3, limit=None)
    expected = [s for s in SPECS if day2 <= s.created < day3]
    assert [r.job_id for r in rows] == newest_first(expected)
    ids = {r.job_id for r in rows}
    # ``since`` is inclusive, ``until`` exclusive.
    assert "job-12" in ids
    assert BY_ID["job-12"].created == day2
    assert "job-24" not in ids
    assert len(rows) == 12

    assert [r.job_id for r in tracker.jobs(since=BASE + timedelta(hours=76))] == [
        "legacy-39",
        "job-38",
    ]
    assert [r.job_id for r in tracker.jobs(until=BASE + timedelta(hours=3))] == [
        "job-01",
        "job-00",
    ]
    assert tracker.jobs(since=NOW) == []


# --- one job ---------------------------------------------------------------------------------


def test_job_detail(db_url: str, core_make_tracker: MakeTracker) -> None:
    clock_values = [NOW, NOW + timedelta(minutes=5)]
    tracker = core_make_tracker(db_url, clock=lambda: clock_values[0])
    urls = [f"https://inputs.example.com/{n}-{chr(122 - n)}.mp4" for n in range(12)]
    request = {
        "models": {"face": {"fps_pred": 3, "identify_faces": False}, "language": {"x": None}},
        "urls": urls,
        "files": [
            {"filename": "b.wav", "md5sum": "abc", "content_type": "audio/wav"},
            {"filename": "a.mp4"},
        ],
        "text": ["second thing", "first thing"],
        "callback_url": "https://hooks.example.com/done",
        "notify": True,
    }
    created = BASE
    queued = {
        "job_id": "rich",
        "request": request,
        "state": {"status": "QUEUED", "created_timestamp_ms": ms(created)},
    }
    tracker.ingest([queued])
    clock_values[0] = NOW + timedelta(minutes=5)
    done = {
        "job_id": "rich",
        "request": request,
        "state": {
            "status": "COMPLETED",
            "created_timestamp_ms": ms(created),
            "started_timestamp_ms": ms(created + timedelta(seconds=1)),
            "ended_timestamp_ms": ms(created + timedelta(seconds=11, milliseconds=500)),
            "num_predictions": 12,
            "num_errors": 1,
        },
    }
    tracker.ingest([done])

    detail = tracker.job("rich")
    assert detail.job_id == "rich"
    assert detail.status == "COMPLETED"
    assert detail.models == ["face", "language"]
    assert detail.configs == {
        "face": {"fps_pred": 3, "identify_faces": False},
        "language": {"x": None},
    }
    assert detail.urls == urls
    assert detail.files == request["files"]
    assert detail.text == ["second thing", "first thing"]
    assert detail.callback_url == "https://hooks.example.com/done"
    assert detail.run_time_s == 10.5
    assert detail.num_predictions == 12
    assert detail.num_errors == 1
    assert detail.history == [
        {
            "from_status": None,
            "to_status": "QUEUED",
            "provider_at": created,
            "observed_at": NOW,
        },
        {
            "from_status": "QUEUED",
            "to_status": "COMPLETED",
            "provider_at": created + timedelta(seconds=11, milliseconds=500),
            "observed_at": NOW + timedelta(minutes=5),
        },
    ]
    assert [(d["kind"], d["state"], d["attempts"]) for d in detail.downloads] == [
        ("artifacts", "pending", 0),
        ("predictions", "pending", 0),
    ]
    assert tracker.jobs()[0].urls == urls


def test_run_time_and_unknown_jobs(tracker: Tracker) -> None:
    assert tracker.run_time("job-00") == BY_ID["job-00"].run_time
    assert tracker.run_time("legacy-15") == 1 + (15 * 13) % 50
    assert tracker.run_time("job-09") is None  # queued
    assert tracker.run_time("job-08") is None  # in progress
    with pytest.raises(UnknownJob, match="no job 'missing' in the database") as info:
        tracker.run_time("missing")
    assert info.value.job_id == "missing"
    with pytest.raises(UnknownJob, match="'nope'"):
        tracker.job("nope")


# --- statistics ------------------------------------------------------------------------------


def test_run_time_stats_by_model(tracker: Tracker) -> None:
    groups: dict[str, list[float]] = {}
    for spec in SPECS:
        for model in spec.models:
            if spec.run_time is not None:
                groups.setdefault(model, []).append(spec.run_time)
    rows = tracker.run_time_stats(by="model")
    assert as_tuples(rows) == expected_stats(groups)
    for row in rows:
        assert row.mean_s == pytest.approx(sum(groups[row.group]) / len(groups[row.group]))
    assert [r.group for r in rows] == ["burst", "face", "language", "prosody"]


def test_run_time_stats_by_status(tracker: Tracker) -> None:
    groups: dict[str, list[float]] = {}
    for spec in SPECS:
        if spec.run_time is not None:
            groups.setdefault(spec.status, []).append(spec.run_time)
    rows = tracker.run_time_stats(by="status")
    assert as_tuples(rows) == expected_stats(groups)
    assert [(r.group, r.jobs) for r in rows] == [("COMPLETED", 24), ("FAILED", 8)]
    for row in rows:
        assert row.mean_s == pytest.approx(sum(groups[row.group]) / len(groups[row.group]))


def test_run_time_stats_by_day(tracker: Tracker) -> None:
    groups: dict[str, list[float]] = {}
    for spec in SPECS:
        if spec.run_time is not None:
            groups.setdefault(spec.created.date().isoformat(), []).append(spec.run_time)
    rows = tracker.run_time_stats(by="day")
    assert as_tuples(rows) == expected_stats(groups)
    assert [r.group for r in rows] == ["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04"]
    for row in rows:
        assert row.mean_s == pytest.approx(sum(groups[row.group]) / len(groups[row.group]))


@pytest.mark.parametrize("by", ["model", "status", "day"])
def test_run_time_stats_since(tracker: Tracker, by: Any) -> None:
    since = BASE + timedelta(days=2)
    groups: dict[str, list[float]] = {}
    for spec in SPECS:
        if spec.run_time is None or spec.created < since:
            continue
        keys = {
            "model": list(spec.models),
            "status": [spec.status],
            "day": [spec.created.date().isoformat()],
        }
        for key in keys[by]:
            groups.setdefault(key, []).append(spec.run_time)
    rows = tracker.run_time_stats(by=by, since=since)
    assert as_tuples(rows) == expected_stats(groups)
    assert sum(r.jobs for r in rows) == sum(len(v) for v in groups.values())


def test_run_time_stats_percentiles_on_a_known_series(
    db_url: str, core_make_tracker: MakeTracker
) -> None:
    # 20 runs of 1..20 s: nearest rank p50 = 10 s (k = ceil(10) - 1), p95 = 19 s (k = 18).
    tracker = core_make_tracker(db_url)
    payloads = [
        {
            "job_id": f"r{n:02d}",
            "request": {"models": {"face": {}}},
            "state": {
                "status": "COMPLETED",
                "created_timestamp_ms": ms(BASE),
                "started_timestamp_ms": ms(BASE),
                "ended_timestamp_ms": ms(BASE + timedelta(seconds=n)),
            },
        }
        for n in range(20, 0, -1)
    ]
    tracker.ingest(payloads)
    [row] = tracker.run_time_stats(by="model")
    assert (row.group, row.jobs, row.mean_s, row.p50_s, row.p95_s, row.max_s) == (
        "face",
        20,
        10.5,
        10.0,
        19.0,
        20.0,
    )


def test_run_time_stats_on_an_empty_database(db_url: str, core_make_tracker: MakeTracker) -> None:
    tracker = core_make_tracker(db_url)
    for by in ("model", "status", "day"):
        assert tracker.run_time_stats(by=by) == []


# --- downloads -------------------------------------------------------------------------------


def expected_downloads() -> list[tuple[str, str]]:
    return sorted((s.job_id, kind) for s in SPECS for kind in s.download_kinds)


def test_outstanding_downloads(tracker: Tracker) -> None:
    rows = tracker.outstanding_downloads()
    assert [(r.job_id, r.kind) for r in rows] == expected_downloads()
    assert len(rows) == 21 * 2 + 3 * 3
    for row in rows:
        assert row.state == "pending"
        assert row.created_at == NOW
        if row.job_id.startswith("legacy-"):
            index = BY_ID[row.job_id].index
            assert row.url_expires_at == LEGACY_EXPIRY[index]
            assert row.source_url == (
                f"https://storage.example.com/{row.job_id}/{row.kind}"
                f"?Expires={int(LEGACY_EXPIRY[index].timestamp())}&Signature=secret{index}"
            )
        else:
            assert row.url_expires_at is None
            assert row.source_url is None

    assert [(r.job_id, r.kind) for r in tracker.outstanding_downloads(limit=4)] == (
        expected_downloads()[:4]
    )
    errors = tracker.outstanding_downloads("errors")
    assert [r.job_id for r in errors] == ["legacy-15", "legacy-23", "legacy-31"]
    assert len(tracker.outstanding_downloads(kind="predictions")) == 24


def test_outstanding_downloads_expiring_within(tracker: Tracker) -> None:
    # Already expired (-5 h) and expiring in 3 h are within a day; 30 h is not.
    soon = tracker.outstanding_downloads(expiring_within=timedelta(hours=24))
    assert [(r.job_id, r.kind) for r in soon] == [
        ("legacy-23", "artifacts"),
        ("legacy-23", "errors"),
        ("legacy-23", "predictions"),
        ("legacy-15", "artifacts"),
        ("legacy-15", "errors"),
        ("legacy-15", "predictions"),
    ]
    later = tracker.outstanding_downloads(expiring_within=timedelta(hours=48))
    assert [r.job_id for r in later] == ["legacy-23"] * 3 + ["legacy-15"] * 3 + ["legacy-31"] * 3
    expiries = [r.url_expires_at for r in later]
    assert expiries == sorted(e for e in expiries if e is not None)
    limited = tracker.outstanding_downloads(expiring_within=timedelta(hours=48), limit=2)
    assert [(r.job_id, r.kind) for r in limited] == [
        ("legacy-23", "artifacts"),
        ("legacy-23", "errors"),
    ]
    only = tracker.outstanding_downloads("predictions", expiring_within=timedelta(hours=4))
    assert [(r.job_id, r.kind) for r in only] == [
        ("legacy-23", "predictions"),
        ("legacy-15", "predictions"),
    ]
    assert tracker.outstanding_downloads(expiring_within=timedelta(hours=-6)) == []


def test_done_and_failed_downloads(tracker: Tracker) -> None:
    with tracker.write() as conn:
        conn.execute(
            update(downloads)
            .where(downloads.c.job_id == "job-00", downloads.c.kind == "artifacts")
            .values(state="done", completed_at=NOW, local_path="/data/a.zip")
        )
        conn.execute(
            update(downloads)
            .where(downloads.c.job_id == "job-00", downloads.c.kind == "predictions")
            .values(state="failed", attempts=3, last_error="HTTP 403")
        )
    rows = tracker.outstanding_downloads()
    assert ("job-00", "artifacts") not in [(r.job_id, r.kind) for r in rows]
    failed = [r for r in rows if r.job_id == "job-00"]
    assert [(r.kind, r.state, r.attempts, r.last_error) for r in failed] == [
        ("predictions", "failed", 3, "HTTP 403")
    ]
    assert len(rows) == len(expected_downloads()) - 1
    pending = tracker.outstanding_downloads(include_failed=False)
    assert len(pending) == len(expected_downloads()) - 2
    assert all(r.state == "pending" for r in pending)
    with tracker.read() as conn:
        view = conn.execute(
            text(
                "SELECT kind, state FROM outstanding_downloads WHERE job_id = 'job-00' "
                "ORDER BY kind"
            )
        ).all()
    assert [tuple(r) for r in view] == [("predictions", "failed")]


# --- SQL views -------------------------------------------------------------------------------


def test_view_job_run_times(tracker: Tracker) -> None:
    with tracker.read() as conn:
        rows = conn.execute(
            text(
                "SELECT job_id, status, models, run_time_s, queue_time_s, error_message "
                "FROM job_run_times ORDER BY job_id"
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        (s.job_id, s.status, ",".join(sorted(s.models)), s.run_time, s.queue_time, s.message)
        for s in sorted(SPECS, key=lambda s: s.job_id)
    ]


def test_view_model_run_times(tracker: Tracker) -> None:
    with tracker.read() as conn:
        rows = conn.execute(
            text("SELECT model, job_id, status, run_time_s FROM model_run_times ORDER BY 1, 2")
        ).all()
        grouped = conn.execute(
            text(
                "SELECT model, COUNT(run_time_s), MAX(run_time_s) FROM model_run_times "
                "GROUP BY model ORDER BY model"
            )
        ).all()
    expected = sorted((m, s.job_id, s.status, s.run_time) for s in SPECS for m in s.models)
    assert [tuple(r) for r in rows] == expected
    for model, count, maximum in grouped:
        values = [s.run_time for s in SPECS if model in s.models and s.run_time is not None]
        assert (count, maximum) == (len(values), max(values))


def test_view_outstanding_downloads(tracker: Tracker) -> None:
    with tracker.read() as conn:
        rows = conn.execute(
            text(
                "SELECT job_id, kind, state, attempts, job_status FROM outstanding_downloads "
                "ORDER BY job_id, kind"
            )
        ).all()
        columns = conn.execute(text("SELECT * FROM outstanding_downloads")).keys()
    assert [tuple(r) for r in rows] == [
        (job_id, kind, "pending", 0, "COMPLETED") for job_id, kind in expected_downloads()
    ]
    # Signed URLs (credentials) stay out of the reporting view.
    assert "source_url" not in list(columns)


def test_view_daily_summary(tracker: Tracker) -> None:
    with tracker.read() as conn:
        rows = conn.execute(
            text(
                "SELECT day, jobs, completed, failed, unfinished, mean_run_time_s, "
                "max_run_time_s, predictions, errors FROM daily_summary ORDER BY day"
            )
        ).all()
    days: dict[date, list[Spec]] = {}
    for spec in SPECS:
        days.setdefault(spec.created.date(), []).append(spec)
    assert len(rows) == 4
    for row, (day, specs) in zip(rows, sorted(days.items()), strict=True):
        run_times = [s.run_time for s in specs if s.run_time is not None]
        assert str(row[0])[:10] == day.isoformat()
        assert tuple(row[1:5]) == (
            len(specs),
            sum(s.status == "COMPLETED" for s in specs),
            sum(s.status == "FAILED" for s in specs),
            sum(s.status in ("QUEUED", "IN_PROGRESS") for s in specs),
        )
        assert row[5] == pytest.approx(sum(run_times) / len(run_times))
        assert row[6] == max(run_times)
        predictions = [s.predictions for s in specs if s.predictions is not None]
        errors = [s.errors for s in specs if s.errors is not None]
        # SQL's SUM over no values is NULL (the last day has no completed job).
        assert row[7] == (sum(predictions) if predictions else None)
        assert row[8] == (sum(errors) if errors else None)


def test_days_are_utc_whatever_the_session_time_zone(
    db_url: str, core_make_tracker: MakeTracker
) -> None:
    if db_url.startswith("postgresql"):
        # A session far from UTC: a job at 23:30 UTC is already "tomorrow" in Tokyo.
        db_url += "?options=-c%20TimeZone%3DAsia/Tokyo"
    tracker = core_make_tracker(db_url)
    late = datetime(2024, 3, 1, 23, 30, tzinfo=UTC)
    payloads = [
        {
            "job_id": job_id,
            "request": {"models": {"face": {}}},
            "state": {
                "status": "COMPLETED",
                "created_timestamp_ms": ms(created),
                "started_timestamp_ms": ms(created),
                "ended_timestamp_ms": ms(created + timedelta(seconds=seconds)),
            },
        }
        for job_id, created, seconds in (
            ("late", late, 4),
            ("early", late + timedelta(hours=1), 6),
        )
    ]
    tracker.ingest(payloads)
    rows = tracker.run_time_stats(by="day")
    assert [(r.group, r.jobs, r.max_s) for r in rows] == [
        ("2024-03-01", 1, 4.0),
        ("2024-03-02", 1, 6.0),
    ]
    assert tracker.job("late").created_at == late
    assert [r.job_id for r in tracker.jobs(since=datetime(2024, 3, 2, tzinfo=UTC))] == ["early"]
    with tracker.read() as conn:
        days = conn.execute(text("SELECT day, jobs FROM daily_summary ORDER BY day")).all()
    assert [(str(d)[:10], n) for d, n in days] == [("2024-03-01", 1), ("2024-03-02", 1)]
