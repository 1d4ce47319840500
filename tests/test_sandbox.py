"""The simulated batch API, exercised over real HTTP on loopback (no mocks)."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests

from jobtracker.sandbox import HTTP_DATE, FaultConfig, Sandbox, serve

JOBS = "/v0/batch/jobs"


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(seed=7) as sb:
        yield sb


@pytest.fixture
def api(sandbox: Sandbox) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers["X-Hume-Api-Key"] = sandbox.api_key
        yield session


def job_url(sb: Sandbox, job_id: str, suffix: str = "") -> str:
    return f"{sb.base_url}{JOBS}/{quote(job_id, safe='')}{suffix}"


def list_jobs(api: requests.Session, sb: Sandbox, **params: Any) -> list[dict[str, Any]]:
    response = api.get(sb.base_url + JOBS, params=params)
    assert response.status_code == 200, response.text
    body: list[dict[str, Any]] = response.json()
    return body


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-Hume-Api-Key": "wrong"}, {"Authorization": "x"}])
def test_bad_or_missing_key_is_401_with_fault_payload(
    sandbox: Sandbox, headers: dict[str, str]
) -> None:
    response = requests.get(sandbox.base_url + JOBS, headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "fault": {
            "faultstring": "Invalid ApiKey",
            "detail": {"errorcode": "oauth.v2.InvalidApiKey"},
        }
    }


def test_auth_failures_are_never_faulted(sandbox: Sandbox) -> None:
    sandbox.faults = FaultConfig(rate=1.0, kinds=("5xx",))
    for _ in range(5):
        assert requests.get(sandbox.base_url + JOBS).status_code == 401
    assert all(record.fault is None for record in sandbox.requests)


# --- list endpoint ----------------------------------------------------------------------------


def test_list_defaults_newest_first_limit_50_and_excludes_legacy(
    sandbox: Sandbox, api: requests.Session
) -> None:
    sandbox.add_jobs(80)
    sandbox.add_jobs(5, legacy_fraction=1.0)
    jobs = list_jobs(api, sandbox)
    assert len(jobs) == 50
    created = [job["state"]["created_timestamp_ms"] for job in jobs]
    assert created == sorted(created, reverse=True)
    assert not any(sandbox.jobs[job["job_id"]].legacy for job in jobs)
    assert len(list_jobs(api, sandbox, limit=1000)) == 80  # clamped to 500, 80 exist
    first = jobs[0]
    assert set(first) == {"type", "job_id", "request", "state"}
    assert set(first["request"]) == {"callback_url", "files", "models", "notify", "text", "urls"}


def test_list_pages_with_when_and_timestamp_ms(sandbox: Sandbox, api: requests.Session) -> None:
    ids = set(sandbox.add_jobs(120))  # consecutive milliseconds
    seen: list[str] = []
    cursor: int | None = None
    while True:
        params: dict[str, Any] = {"limit": 50}
        if cursor is not None:
            params.update(when="created_before", timestamp_ms=cursor)
        page = list_jobs(api, sandbox, **params)
        if not page:
            break
        seen += [job["job_id"] for job in page]
        cursor = page[-1]["state"]["created_timestamp_ms"]
    assert len(seen) == len(set(seen)) == 120
    assert set(seen) == ids

    pivot = sandbox.jobs[seen[60]].created_ms
    after = list_jobs(api, sandbox, when="created_after", timestamp_ms=pivot, limit=500)
    before = list_jobs(api, sandbox, when="created_before", timestamp_ms=pivot, limit=500)
    assert all(job["state"]["created_timestamp_ms"] > pivot for job in after)  # strict
    assert all(job["state"]["created_timestamp_ms"] < pivot for job in before)
    assert len(after) + len(before) == 119


def test_jobs_can_share_a_millisecond(sandbox: Sandbox, api: requests.Session) -> None:
    ids = sandbox.add_jobs(4, same_ms=True)
    created = {sandbox.jobs[job_id].created_ms for job_id in ids}
    assert len(created) == 1
    (ms,) = created
    assert list_jobs(api, sandbox, when="created_before", timestamp_ms=ms) == []
    assert len(list_jobs(api, sandbox, when="created_before", timestamp_ms=ms + 1)) == 4


def test_list_status_filter_and_sorting(sandbox: Sandbox, api: requests.Session) -> None:
    sandbox.add_jobs(60, queue_s=(0, 100), run_s=(0, 100), fail_fraction=0.3, spread_s=50)
    sandbox.clock.advance(90)
    everything = list_jobs(api, sandbox, limit=500)
    statuses = {job["state"]["status"] for job in everything}
    assert len(statuses) >= 3
    for wanted in (["COMPLETED"], ["QUEUED", "IN_PROGRESS"]):
        answer = list_jobs(api, sandbox, status=wanted, limit=500)
        expected = [job for job in everything if job["state"]["status"] in wanted]
        assert [job["job_id"] for job in answer] == [job["job_id"] for job in expected]

    ended = list_jobs(api, sandbox, sort_by="ended", direction="asc", limit=500)
    values = [job["state"].get("ended_timestamp_ms") for job in ended]
    finished = [v for v in values if v is not None]
    assert finished == sorted(finished)
    assert values[: len(finished)] == finished  # unfinished jobs come last
    asc = list_jobs(api, sandbox, direction="asc", limit=500)
    assert [job["job_id"] for job in asc] == [job["job_id"] for job in reversed(everything)]


@pytest.mark.parametrize(
    "params",
    [{"limit": "x"}, {"limit": 0}, {"status": "DONE"}, {"sort_by": "size"}, {"when": "soon"}],
)
def test_list_rejects_bad_parameters(
    sandbox: Sandbox, api: requests.Session, params: dict[str, Any]
) -> None:
    response = api.get(sandbox.base_url + JOBS, params=params)
    assert response.status_code == 400
    assert "message" in response.json()


def test_list_over_ten_thousand_jobs_is_quick(sandbox: Sandbox, api: requests.Session) -> None:
    sandbox.add_jobs(10_000, spread_s=3600)
    start = time.perf_counter()
    for _ in range(20):
        page = list_jobs(api, sandbox, limit=100, when="created_before", timestamp_ms=1)
        assert page == []
        assert len(list_jobs(api, sandbox, limit=100)) == 100
    assert time.perf_counter() - start < 5  # generous: a linear scan would still pass, a hang not


# --- lifecycle --------------------------------------------------------------------------------


def test_lifecycle_follows_the_clock(sandbox: Sandbox, api: requests.Session) -> None:
    job_id = sandbox.add_job(queue_s=10, run_s=20, num_predictions=7)
    failed_id = sandbox.add_job(queue_s=1, run_s=1, status="FAILED")

    def state(jid: str) -> dict[str, Any]:
        body: dict[str, Any] = api.get(job_url(sandbox, jid)).json()["state"]
        return body

    created = sandbox.jobs[job_id].created_ms
    assert state(job_id) == {"status": "QUEUED", "created_timestamp_ms": created}
    sandbox.clock.advance(10)
    assert state(job_id) == {
        "status": "IN_PROGRESS",
        "created_timestamp_ms": created,
        "started_timestamp_ms": created + 10_000,
    }
    sandbox.clock.advance(19.999)
    assert state(job_id)["status"] == "IN_PROGRESS"
    sandbox.clock.advance(0.001)
    assert state(job_id) == {
        "status": "COMPLETED",
        "created_timestamp_ms": created,
        "started_timestamp_ms": created + 10_000,
        "ended_timestamp_ms": created + 30_000,
        "num_predictions": 7,
        "num_errors": 0,
    }
    failed = state(failed_id)
    assert failed["status"] == "FAILED"
    assert failed["message"] == "user 'abcde' has exceeded their usage limit"

    sandbox.set_final(job_id, "FAILED", "boom")
    assert state(job_id)["message"] == "boom"


def test_unknown_job_and_unfinished_results(sandbox: Sandbox, api: requests.Session) -> None:
    missing = api.get(job_url(sandbox, "no-such-job"))
    assert missing.status_code == 404
    assert missing.json() == {"message": "job not found"}
    assert api.get(job_url(sandbox, "no-such-job", "/predictions")).status_code == 404
    job_id = sandbox.add_job(queue_s=5, run_s=5)
    for suffix in ("/predictions", "/artifacts"):
        response = api.get(job_url(sandbox, job_id, suffix))
        assert response.status_code == 400
        assert "QUEUED" in response.json()["message"]


@pytest.mark.parametrize("job_id", ["../x", "a/b", "ünï cödé", "%2F", "with space", "q?x=1#f"])
def test_hostile_job_ids_round_trip(sandbox: Sandbox, api: requests.Session, job_id: str) -> None:
    sandbox.add_job(job_id, queue_s=0, run_s=0)
    sandbox.add_job(job_id + "-legacy", queue_s=0, run_s=0, legacy=True)
    detail = api.get(job_url(sandbox, job_id))
    assert detail.status_code == 200
    assert detail.json()["job_id"] == job_id
    predictions = api.get(job_url(sandbox, job_id, "/predictions"))
    assert sha256(predictions.content) == sandbox.expected_sha256(job_id, "predictions")
    legacy = api.get(job_url(sandbox, job_id + "-legacy")).json()
    download = requests.get(legacy["completed"]["predictions_url"])
    assert download.status_code == 200
    assert sha256(download.content) == sandbox.expected_sha256(job_id + "-legacy", "predictions")


# --- legacy shape and the storage host ------------------------------------------------------


def test_legacy_shape(sandbox: Sandbox, api: requests.Session) -> None:
    done = sandbox.add_job(queue_s=2, run_s=3, legacy=True, num_predictions=20, num_errors=1)
    failed = sandbox.add_job(queue_s=1, run_s=1, legacy=True, status="FAILED")
    queued = api.get(job_url(sandbox, done)).json()
    assert queued["status"] == "QUEUED"
    assert isinstance(queued["creation_timestamp"], int)
    assert "completion_timestamp" not in queued
    assert set(queued["request"]) == {"models", "urls", "notify"}
    sandbox.clock.advance(5)
    body = api.get(job_url(sandbox, done)).json()
    assert body["status"] == "COMPLETED"
    assert body["completion_timestamp"] - body["creation_timestamp"] == 5
    completed = body["completed"]
    assert completed["num_predictions"] == 20
    assert completed["num_errors"] == 1
    for key, name in [
        ("predictions_url", "job-predictions.json"),
        ("artifacts_url", "job-artifacts.zip"),
        ("errors_url", "job-errors.txt"),
    ]:
        url = urlsplit(completed[key])
        assert f"{url.scheme}://{url.netloc}" == sandbox.storage_url
        assert url.path == f"/results/{done}/{name}"
        assert "GoogleAccessId=sandbox%40example.iam" in url.query
    assert api.get(job_url(sandbox, failed)).json()["failed"] == {
        "message": "user 'abcde' has exceeded their usage limit"
    }


def test_signed_urls_download_expire_and_refresh(sandbox: Sandbox, api: requests.Session) -> None:
    job_id = sandbox.add_job(queue_s=0, run_s=0, legacy=True, num_errors=2)
    completed = api.get(job_url(sandbox, job_id)).json()["completed"]
    for key, kind in [
        ("predictions_url", "predictions"),
        ("artifacts_url", "artifacts"),
        ("errors_url", "errors"),
    ]:
        response = requests.get(completed[key])
        assert response.status_code == 200
        assert sha256(response.content) == sandbox.expected_sha256(job_id, kind)

    sandbox.clock.advance(sandbox.url_ttl_s + 1)
    expired = requests.get(completed["predictions_url"])
    assert expired.status_code == 400
    assert expired.text.startswith("<?xml version='1.0' encoding='UTF-8'?><Error>")
    assert "<Code>ExpiredToken</Code>" in expired.text

    fresh = api.get(job_url(sandbox, job_id)).json()["completed"]["predictions_url"]
    assert fresh != completed["predictions_url"]
    assert requests.get(fresh).status_code == 200


@pytest.mark.parametrize("tamper", ["signature", "expires", "path", "missing"])
def test_tampered_signed_urls_are_403(sandbox: Sandbox, tamper: str) -> None:
    job_id = sandbox.add_job(queue_s=0, run_s=0, legacy=True)
    other = sandbox.add_job(queue_s=0, run_s=0, legacy=True)
    url = sandbox.signed_url(job_id, "predictions")
    if tamper == "signature":
        url = url.replace("Signature=", "Signature=AAAA")
    elif tamper == "expires":
        url = url.replace("Expires=", "Expires=9")
    elif tamper == "path":
        url = url.replace(job_id, other)
    else:
        url = url.split("?")[0]
    response = requests.get(url)
    assert response.status_code == 403
    assert response.headers["Content-Type"].startswith("application/xml")
    assert response.text.startswith("<?xml version='1.0' encoding='UTF-8'?><Error><Code>")


def test_storage_host_never_needs_or_sees_the_api_key(
    sandbox: Sandbox, api: requests.Session
) -> None:
    job_id = sandbox.add_job(queue_s=0, run_s=0, legacy=True)
    completed = api.get(job_url(sandbox, job_id)).json()["completed"]
    assert urlsplit(completed["predictions_url"]).hostname != urlsplit(sandbox.base_url).hostname
    assert requests.get(completed["artifacts_url"]).status_code == 200
    storage = [r for r in sandbox.requests if r.role == "storage"]
    api_side = [r for r in sandbox.requests if r.role == "api"]
    assert len(storage) == 1
    assert sandbox.request_count("storage") == 1
    assert sandbox.request_count() == len(api_side) + 1
    assert all(name.lower() != "x-hume-api-key" for name in storage[0].headers)
    assert sandbox.api_key not in json.dumps(storage[0].headers)
    assert storage[0].status == 200
    sandbox.clear_log()
    assert sandbox.requests == []


# --- result bodies and ranges -----------------------------------------------------------------


def test_predictions_and_artifacts_match_expected_sha256(
    sandbox: Sandbox, api: requests.Session
) -> None:
    sandbox.artifact_bytes = 1_000_000
    job_id = sandbox.add_job(queue_s=0, run_s=0)
    predictions = api.get(job_url(sandbox, job_id, "/predictions"))
    assert predictions.status_code == 200
    body = predictions.json()
    assert isinstance(body, list)
    assert {"source", "results"} <= set(body[0])
    assert sha256(predictions.content) == sandbox.expected_sha256(job_id, "predictions")

    artifacts = api.get(job_url(sandbox, job_id, "/artifacts"))
    assert artifacts.status_code == 200
    assert artifacts.headers["Content-Type"] == "application/zip"
    assert len(artifacts.content) == 1_000_000
    assert sha256(artifacts.content) == sandbox.expected_sha256(job_id, "artifacts")
    with zipfile.ZipFile(io.BytesIO(artifacts.content)) as archive:
        assert archive.testzip() is None
    head = api.head(job_url(sandbox, job_id, "/artifacts"))
    assert head.headers["Content-Length"] == "1000000"


def test_range_requests_return_the_tail(sandbox: Sandbox, api: requests.Session) -> None:
    sandbox.artifact_bytes = 300_000
    job_id = sandbox.add_job(queue_s=0, run_s=0, legacy=True)
    full = api.get(job_url(sandbox, job_id, "/artifacts")).content
    tail = api.get(job_url(sandbox, job_id, "/artifacts"), headers={"Range": "bytes=123456-"})
    assert tail.status_code == 206
    assert tail.headers["Content-Range"] == "bytes 123456-299999/300000"
    assert tail.content == full[123456:]

    url = sandbox.signed_url(job_id, "artifacts")
    stored = requests.get(url, headers={"Range": "bytes=299990-"})
    assert stored.status_code == 206
    assert stored.content == full[-10:]
    assert requests.get(url, headers={"Range": "bytes=300000-"}).status_code == 416


# --- faults -----------------------------------------------------------------------------------


def faulted(sandbox: Sandbox, kind: str, **options: Any) -> None:
    sandbox.faults = FaultConfig(rate=1.0, kinds=(kind,), **options)


def test_fault_5xx(sandbox: Sandbox, api: requests.Session) -> None:
    faulted(sandbox, "5xx")
    codes = {api.get(sandbox.base_url + JOBS).status_code for _ in range(12)}
    assert codes <= {500, 502, 503}
    assert len(codes) > 1
    assert {r.fault for r in sandbox.requests} == {"5xx"}


@pytest.mark.parametrize("retry_after", ["0", "1", HTTP_DATE])
def test_fault_429_has_retry_after(
    sandbox: Sandbox, api: requests.Session, retry_after: str
) -> None:
    faulted(sandbox, "429", retry_after=(retry_after,))
    response = api.get(sandbox.base_url + JOBS)
    assert response.status_code == 429
    value = response.headers["Retry-After"]
    if retry_after == HTTP_DATE:
        assert 0 < parsedate_to_datetime(value).timestamp() - time.time() <= 2.01
    else:
        assert value == retry_after


def test_fault_slow(sandbox: Sandbox, api: requests.Session) -> None:
    faulted(sandbox, "slow", slow_s=0.2)
    start = time.perf_counter()
    response = api.get(sandbox.base_url + JOBS)
    assert response.status_code == 200
    assert time.perf_counter() - start >= 0.2


def test_fault_malformed(sandbox: Sandbox, api: requests.Session) -> None:
    faulted(sandbox, "malformed")
    for _ in range(6):
        response = api.get(sandbox.base_url + JOBS)
        assert response.status_code == 200
        with pytest.raises(ValueError, match=r"."):
            response.json()


def test_fault_truncated(sandbox: Sandbox, api: requests.Session) -> None:
    sandbox.add_jobs(3)
    faulted(sandbox, "truncated")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        api.get(sandbox.base_url + JOBS)
    sandbox.faults = FaultConfig()  # switched off at run time: the pool recovers
    assert api.get(sandbox.base_url + JOBS).status_code == 200


def test_fault_stale(sandbox: Sandbox, api: requests.Session) -> None:
    current = sandbox.add_job(queue_s=0, run_s=0)
    legacy = sandbox.add_job(queue_s=0, run_s=0, legacy=True)
    faulted(sandbox, "stale")
    state = api.get(job_url(sandbox, current)).json()["state"]
    assert state["status"] == "IN_PROGRESS"
    assert "ended_timestamp_ms" not in state
    legacy_body = api.get(job_url(sandbox, legacy)).json()
    assert legacy_body["status"] == "IN_PROGRESS"
    assert "completed" not in legacy_body
    assert api.get(sandbox.base_url + JOBS).status_code == 200  # lists are never stale
    assert [r.fault for r in sandbox.requests] == ["stale", "stale", None]


def test_storage_faults_only_with_storage_rate(sandbox: Sandbox) -> None:
    job_id = sandbox.add_job(queue_s=0, run_s=0, legacy=True)
    url = sandbox.signed_url(job_id, "errors")
    sandbox.faults = FaultConfig(rate=1.0, kinds=("5xx",))
    assert requests.get(url).status_code == 200
    sandbox.faults = FaultConfig(rate=1.0, kinds=("5xx",), storage_rate=1.0)
    response = requests.get(url)
    assert response.status_code in (500, 502, 503)
    assert "<Error>" in response.text


def test_faults_are_reproducible(api: requests.Session) -> None:
    def fault_sequence(seed: int) -> list[tuple[str | None, int]]:
        with Sandbox(seed=seed, faults=FaultConfig(rate=0.5, kinds=("5xx", "429"))) as sb:
            for _ in range(30):
                requests.get(sb.base_url + JOBS, headers={"X-Hume-Api-Key": sb.api_key})
            return [(r.fault, r.status) for r in sb.requests]

    first = fault_sequence(11)
    assert first == fault_sequence(11)
    assert {fault for fault, _ in first} == {None, "5xx", "429"}
    assert first != fault_sequence(12)


# --- determinism, transport, runner ---------------------------------------------------------


def test_same_seed_same_jobs() -> None:
    def snapshot(seed: int) -> str:
        with Sandbox(seed=seed) as sb:
            sb.add_jobs(40, legacy_fraction=0.2, spread_s=30)
            sb.clock.advance(60)
            headers = {"X-Hume-Api-Key": sb.api_key}
            listed = requests.get(sb.base_url + JOBS, params={"limit": 500}, headers=headers)
            some = sorted(sb.jobs)[:5]
            details = [requests.get(job_url(sb, j), headers=headers).text for j in some]
            hashes = [sb.expected_sha256(j, "artifacts") for j in some]
            return json.dumps([listed.text, details, hashes]).replace(sb.storage_url, "STORAGE")

    assert snapshot(5) == snapshot(5)
    assert snapshot(5) != snapshot(6)


def test_keep_alive_and_stop_closes_connections() -> None:
    sb = Sandbox(seed=1).start()
    host, port = urlsplit(sb.base_url).hostname, urlsplit(sb.base_url).port
    assert host is not None
    conn = http.client.HTTPConnection(host, port, timeout=5)
    sockets = []
    for _ in range(3):
        conn.request("GET", JOBS, headers={"X-Hume-Api-Key": sb.api_key})
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Length") == str(len(response.read()))
        sockets.append(conn.sock)
    assert sockets[0] is sockets[1] is sockets[2]  # one connection, reused
    started = time.perf_counter()
    sb.stop()
    assert time.perf_counter() - started < 2

    def request_again() -> None:
        conn.request("GET", JOBS, headers={"X-Hume-Api-Key": sb.api_key})
        conn.getresponse().read()

    # The pooled connection is cut, not left to a handler thread that outlives the sandbox.
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        request_again()
    conn.close()


def test_serve_runs_in_the_foreground_until_stopped() -> None:
    out = io.StringIO()
    stop = threading.Event()
    runner = threading.Thread(
        target=serve,
        args=("127.0.0.1", 0),
        kwargs={
            "jobs": 30,
            "legacy": 5,
            "seed": 3,
            "api_key": "demo-key",
            "time_scale": 60.0,
            "out": out,
            "stop_event": stop,
        },
        daemon=True,
    )
    runner.start()
    deadline = time.monotonic() + 5
    while "Ctrl+C" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    text = out.getvalue()
    assert "demo-key" in text
    base_url = text.split("sandbox: ", 1)[1].split()[0]
    jobs = requests.get(base_url + JOBS, headers={"X-Hume-Api-Key": "demo-key"}).json()
    assert len(jobs) == 30
    assert {job["state"]["status"] for job in jobs} & {"COMPLETED", "FAILED"}
    stop.set()
    runner.join(5)
    assert not runner.is_alive()
