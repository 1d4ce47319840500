"""BatchClient against the sandbox over real HTTP: parameters, shapes, errors, retries, secrets."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest

from jobtracker.client import (
    API_KEY_HEADER,
    BatchClient,
    RateLimiter,
    RetryPolicy,
    parse_retry_after,
)
from jobtracker.errors import ApiError, AuthError, JobNotFound
from jobtracker.sandbox import HTTP_DATE, FaultConfig, Sandbox

KEY = "sandbox-key"
JOBS_PATH = "/v0/batch/jobs"
FAST = RetryPolicy(max_attempts=6, base_s=0.01, floor_s=0.01, budget_s=10)


def make_client(sb: Sandbox, key: str = KEY, retry: RetryPolicy = FAST) -> BatchClient:
    return BatchClient(sb.base_url, key, max_rps=1000, retry=retry)


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox(seed=11) as sandbox:
        yield sandbox


@pytest.fixture
def client(sb: Sandbox) -> Iterator[BatchClient]:
    with make_client(sb) as c:
        yield c


def lower_headers(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


# --- endpoints and parameters ---------------------------------------------------------------


def add_mixed_jobs(sb: Sandbox) -> dict[str, str]:
    """One job per status at the sandbox's current time; returns status -> job id."""
    now = sb.now()
    return {
        "COMPLETED": sb.add_job(created_at=now - 100, queue_s=1, run_s=5),
        "FAILED": sb.add_job(created_at=now - 90, queue_s=1, run_s=5, status="FAILED"),
        "IN_PROGRESS": sb.add_job(created_at=now - 80, queue_s=1, run_s=1000),
        "QUEUED": sb.add_job(created_at=now - 70, queue_s=1000),
    }


def test_list_jobs_sends_every_parameter_and_repeats_status(
    sb: Sandbox, client: BatchClient
) -> None:
    ids = add_mixed_jobs(sb)
    created = sb.jobs[ids["COMPLETED"]].created_ms
    page = client.list_jobs(
        limit=10,
        status=["QUEUED", "IN_PROGRESS"],
        when="created_after",
        timestamp_ms=created,
        sort_by="created",
        direction="asc",
    )
    assert [job["job_id"] for job in page] == [ids["IN_PROGRESS"], ids["QUEUED"]]
    record = sb.requests[-1]
    assert record.path == JOBS_PATH
    assert record.query == {
        "limit": ["10"],
        "status": ["QUEUED", "IN_PROGRESS"],
        "when": ["created_after"],
        "timestamp_ms": [str(created)],
        "sort_by": ["created"],
        "direction": ["asc"],
    }


def test_list_jobs_without_parameters_sends_none(sb: Sandbox, client: BatchClient) -> None:
    add_mixed_jobs(sb)
    page = client.list_jobs()
    assert len(page) == 4
    assert sb.requests[-1].query == {}
    # The API's default order is newest first.
    created = [job["state"]["created_timestamp_ms"] for job in page]
    assert created == sorted(created, reverse=True)


def test_list_jobs_when_filters_strictly_both_ways(sb: Sandbox, client: BatchClient) -> None:
    ids = sb.add_jobs(9)  # consecutive milliseconds
    pivot = sb.jobs[ids[4]].created_ms
    after = client.list_jobs(when="created_after", timestamp_ms=pivot, direction="asc")
    before = client.list_jobs(when="created_before", timestamp_ms=pivot, direction="asc")
    assert [j["job_id"] for j in after] == ids[5:]
    assert [j["job_id"] for j in before] == ids[:4]


@pytest.mark.parametrize("direction", ["asc", "desc"])
def test_list_jobs_sort_by_ended_honours_direction(
    sb: Sandbox, client: BatchClient, direction: str
) -> None:
    now = sb.now()
    # Created in one order, ended in the opposite one.
    first = sb.add_job(created_at=now - 100, queue_s=1, run_s=60)
    second = sb.add_job(created_at=now - 90, queue_s=1, run_s=20)
    running = sb.add_job(created_at=now - 80, queue_s=1, run_s=1000)
    page = client.list_jobs(sort_by="ended", direction=direction)
    ended = [second, first] if direction == "asc" else [first, second]
    # A job that has not ended has nothing to sort on: it comes last either way.
    assert [j["job_id"] for j in page] == [*ended, running]
    assert sb.requests[-1].query == {"sort_by": ["ended"], "direction": [direction]}


def test_get_job_returns_both_shapes_untouched(sb: Sandbox, client: BatchClient) -> None:
    now = sb.now()
    current = sb.add_job(created_at=now - 100, queue_s=1, run_s=5)
    legacy = sb.add_job(created_at=now - 100, queue_s=1, run_s=5, legacy=True, status="FAILED")
    payload = client.get_job(current)
    assert payload["job_id"] == current
    assert payload["state"]["status"] == "COMPLETED"
    assert payload["state"]["created_timestamp_ms"] == sb.jobs[current].created_ms
    old = client.get_job(legacy)
    assert "job_id" not in old
    assert old["status"] == "FAILED"
    assert old["creation_timestamp"] == sb.jobs[legacy].created_ms // 1000
    assert old["failed"]["message"] == sb.jobs[legacy].error


def test_get_job_quotes_the_id_into_one_path_segment(sb: Sandbox, client: BatchClient) -> None:
    odd = sb.add_job("a/b c?d", created_at=sb.now() - 10, queue_s=1, run_s=1)
    assert client.get_job(odd)["job_id"] == odd
    assert sb.requests[-1].path == JOBS_PATH + "/a%2Fb%20c%3Fd"


def test_unknown_job_raises_job_not_found(sb: Sandbox, client: BatchClient) -> None:
    with pytest.raises(JobNotFound) as info:
        client.get_job("no-such-job")
    assert info.value.status == 404
    assert isinstance(info.value, ApiError)
    assert "no-such-job" in str(info.value)
    assert sb.request_count("api") == 1  # a 404 is an answer, not retried


def test_wrong_key_raises_auth_error_without_retrying(sb: Sandbox) -> None:
    with make_client(sb, key="not-the-key") as c, pytest.raises(AuthError) as info:
        c.list_jobs()
    assert "Invalid ApiKey" in str(info.value)
    assert info.value.exit_code == 3
    records = sb.requests
    assert [r.status for r in records] == [401]


def test_bad_query_is_an_api_error_with_the_status(sb: Sandbox, client: BatchClient) -> None:
    with pytest.raises(ApiError) as info:
        client.list_jobs(status=["BOGUS"])
    assert info.value.status == 400
    assert not isinstance(info.value, JobNotFound | AuthError)
    assert "BOGUS" in str(info.value)
    assert sb.request_count("api") == 1


# --- retries ---------------------------------------------------------------------------------


def test_persistent_5xx_gives_up_after_max_attempts(sb: Sandbox) -> None:
    sb.add_jobs(3)
    sb.faults = FaultConfig(rate=1.0, kinds=("5xx",))
    policy = RetryPolicy(max_attempts=4, base_s=0.01, floor_s=0.01, budget_s=10)
    with make_client(sb, retry=policy) as c, pytest.raises(ApiError) as info:
        c.list_jobs()
    assert "gave up after 4 attempt(s)" in str(info.value)
    records = sb.requests
    assert len(records) == 4
    assert {r.status for r in records} <= {500, 502, 503}
    assert c.requests_made == 4


def test_half_the_requests_failing_still_succeeds(sb: Sandbox) -> None:
    ids = sb.add_jobs(5)
    sb.faults = FaultConfig(rate=0.5, kinds=("5xx", "429"), retry_after=("0",))
    policy = RetryPolicy(max_attempts=12, base_s=0.01, floor_s=0.01, budget_s=10)
    with make_client(sb, retry=policy) as c:
        for job_id in ids:
            assert c.get_job(job_id)["job_id"] == job_id
        assert {j["job_id"] for j in c.list_jobs()} == set(ids)
    records = sb.requests
    faulted = [r for r in records if r.fault is not None]
    assert faulted, "the fault rate should have broken some requests"
    assert len(records) == len(ids) + 1 + len(faulted)
    assert sum(1 for r in records if r.status == 200) == len(ids) + 1


def test_retry_after_zero_is_not_a_tight_loop(sb: Sandbox) -> None:
    sb.faults = FaultConfig(rate=1.0, kinds=("429",), retry_after=("0",))
    policy = RetryPolicy(max_attempts=4, base_s=0.0, floor_s=0.05, budget_s=10)
    started = time.monotonic()
    with make_client(sb, retry=policy) as c, pytest.raises(ApiError, match="HTTP 429"):
        c.list_jobs()
    elapsed = time.monotonic() - started
    assert elapsed >= 3 * 0.05
    records = sb.requests
    assert len(records) == 4
    assert all(r.status == 429 for r in records)
    # The sandbox saw them spread out too (its timestamps jitter a little under load).
    assert records[-1].wall_time - records[0].wall_time >= 0.1


def test_retry_after_http_date_is_honoured(sb: Sandbox) -> None:
    sb.faults = FaultConfig(rate=1.0, kinds=("429",), retry_after=(HTTP_DATE,))
    policy = RetryPolicy(max_attempts=2, base_s=0.0, floor_s=0.01, budget_s=10)
    started = time.monotonic()
    with make_client(sb, retry=policy) as c, pytest.raises(ApiError, match="HTTP 429"):
        c.list_jobs()
    # The date is at least a second ahead of the moment the sandbox answered.
    assert time.monotonic() - started >= 0.9
    assert sb.request_count() == 2


def test_retry_after_beyond_the_budget_gives_up_at_once(sb: Sandbox) -> None:
    sb.faults = FaultConfig(rate=1.0, kinds=("429",), retry_after=("3600",))
    policy = RetryPolicy(max_attempts=5, base_s=0.0, floor_s=0.01, budget_s=5)
    started = time.monotonic()
    with make_client(sb, retry=policy) as c, pytest.raises(ApiError, match="budget"):
        c.list_jobs()
    assert time.monotonic() - started < 2
    assert sb.request_count() == 1


@pytest.mark.parametrize(
    ("kind", "message"), [("truncated", "cut short"), ("malformed", "not valid JSON")]
)
def test_unreadable_bodies_are_retried(sb: Sandbox, kind: str, message: str) -> None:
    sb.add_jobs(20)
    sb.faults = FaultConfig(rate=1.0, kinds=(kind,))
    policy = RetryPolicy(max_attempts=3, base_s=0.01, floor_s=0.01, budget_s=10)
    with make_client(sb, retry=policy) as c, pytest.raises(ApiError, match=message):
        c.list_jobs(limit=20)
    records = sb.requests
    assert len(records) == 3
    assert all(r.fault == kind for r in records)


def test_unreadable_bodies_now_and_then_still_give_the_right_answer(sb: Sandbox) -> None:
    ids = sb.add_jobs(20)
    sb.faults = FaultConfig(rate=0.5, kinds=("truncated", "malformed"))
    policy = RetryPolicy(max_attempts=12, base_s=0.01, floor_s=0.01, budget_s=10)
    with make_client(sb, retry=policy) as c:
        for _ in range(4):
            page = c.list_jobs(limit=20, direction="asc")
            assert [j["job_id"] for j in page] == ids
        for job_id in ids[:6]:
            assert c.get_job(job_id)["job_id"] == job_id
    kinds = {r.fault for r in sb.requests}
    assert {"truncated", "malformed"} <= kinds


def test_read_timeouts_are_retried(sb: Sandbox) -> None:
    sb.faults = FaultConfig(rate=1.0, kinds=("slow",), slow_s=0.5)
    policy = RetryPolicy(max_attempts=2, base_s=0.01, floor_s=0.01, budget_s=10)
    with (
        BatchClient(sb.base_url, KEY, max_rps=1000, retry=policy, timeout=(2.0, 0.1)) as c,
        pytest.raises(ApiError, match="timed out"),
    ):
        c.list_jobs()
    # The sandbox logs a slow request once its delay is over.
    for _ in range(100):
        if sb.request_count() >= 2:
            break
        time.sleep(0.02)
    assert sb.request_count() == 2


# --- Retry-After parsing, rate limit ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5", 5.0), (" 12 ", 12.0), ("0", 0.0), (None, None), ("", None)],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30.0)
    # A date in the past means "now", never a negative wait.
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    # A date without a zone is read as UTC.
    assert parse_retry_after("Tue, 14 Nov 2023 22:14:00", now=now) == pytest.approx(40.0)


@pytest.mark.parametrize("value", ["soon", "-5", "1.5", "Mon, 99 Foo 2023", "12 seconds"])
def test_parse_retry_after_garbage_is_none(value: str) -> None:
    assert parse_retry_after(value) is None


def test_rate_limiter_spaces_acquisitions_across_threads() -> None:
    limiter = RateLimiter(100)
    stamps: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(5):
            limiter.acquire()
            with lock:
                stamps.append(time.monotonic())

    started = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    elapsed = time.monotonic() - started
    assert len(stamps) == 20
    # 20 evenly spaced slots at 100/s: the last one is 19 intervals after the first.
    assert 0.18 <= elapsed < 2.0
    assert max(stamps) - min(stamps) >= 0.18


def test_rate_limiter_rejects_a_non_positive_rate() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0)


def test_client_requests_respect_max_rps(sb: Sandbox) -> None:
    ids = sb.add_jobs(3)
    started = time.monotonic()
    with BatchClient(sb.base_url, KEY, max_rps=20, retry=FAST) as c:
        for _ in range(3):
            for job_id in ids:
                c.get_job(job_id)
    # Nine requests at 20/s: eight intervals of 50 ms at least.
    assert time.monotonic() - started >= 0.38


# --- the API key stays with the API --------------------------------------------------------


def test_api_key_goes_to_the_api_host_only(sb: Sandbox, client: BatchClient) -> None:
    now = sb.now()
    job_id = sb.add_job(created_at=now - 100, queue_s=1, run_s=5, legacy=True)
    client.get_job(job_id)
    signed = client.get_job(job_id)["completed"]["predictions_url"]
    assert signed.startswith(sb.storage_url)
    with client.send("GET", signed) as response:
        assert response.status_code == 200
        assert len(response.content) == sb.expected_size(job_id, "predictions")
    with client.send("GET", sb.signed_url(job_id, "artifacts")) as response:
        assert response.status_code == 200
    api = [r for r in sb.requests if r.role == "api"]
    storage = [r for r in sb.requests if r.role == "storage"]
    assert len(api) == 2
    assert len(storage) == 2
    assert all(lower_headers(r.headers).get(API_KEY_HEADER.lower()) == KEY for r in api)
    for record in storage:
        assert API_KEY_HEADER.lower() not in lower_headers(record.headers)
        assert KEY not in " ".join(record.headers.values())


def test_api_key_is_never_in_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-Very-Secret-4d2a91"
    wrong = "sk-Wrong-Secret-77c0e3"
    caplog.set_level(logging.DEBUG)
    errors: list[Exception] = []
    with Sandbox(seed=5, api_key=secret) as sb:
        sb.add_jobs(3)
        policy = RetryPolicy(max_attempts=2, base_s=0.01, floor_s=0.01, budget_s=10)
        with make_client(sb, key=secret, retry=policy) as c:
            for call in (
                lambda: c.get_job("missing-job"),
                lambda: c.list_jobs(status=["BOGUS"]),
            ):
                with pytest.raises(ApiError) as info:
                    call()
                errors.append(info.value)
            sb.faults = FaultConfig(rate=1.0, kinds=("5xx",))
            with pytest.raises(ApiError) as info:
                c.list_jobs()
            errors.append(info.value)
            sb.faults = FaultConfig(rate=1.0, kinds=("malformed",))
            with pytest.raises(ApiError) as info:
                c.list_jobs()
            errors.append(info.value)
            sb.faults = None
        with make_client(sb, key=wrong, retry=policy) as c, pytest.raises(AuthError) as auth:
            c.list_jobs()
        errors.append(auth.value)
    assert len(errors) == 5
    for exc in errors:
        for text in (str(exc), repr(exc), str(getattr(exc, "url", ""))):
            assert secret not in text
            assert wrong not in text
    assert caplog.records, "the client should log its requests"
    assert secret not in caplog.text
    assert wrong not in caplog.text
