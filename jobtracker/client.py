"""The batch API over one ``requests.Session``: timeouts, retries, rate limit, auth.

The client returns decoded JSON untouched; it never parses job results and never touches SQL.

* The API key goes in ``X-Hume-Api-Key`` on requests to the API's own origin and nowhere else:
  redirects are followed by hand so a redirect to a storage host never carries it.
* Connection errors, timeouts, 5xx, 429 and unreadable bodies are retried with exponential
  backoff and full jitter, honouring ``Retry-After`` (seconds or an HTTP date; never less than a
  floor, so ``Retry-After: 0`` is not a tight loop), bounded in count and in total time.
* A client-side rate limit shared by every thread keeps a poll from provoking 429s by itself.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests

from jobtracker._version import __version__
from jobtracker.errors import ApiError, AuthError, JobNotFound
from jobtracker.urls import redact_url

log = logging.getLogger("jobtracker.client")

API_KEY_HEADER = "X-Hume-Api-Key"
#: The API documents 600 requests per minute per organization.
DEFAULT_MAX_RPS = 10.0
_RETRY_STATUSES = {429, 500, 502, 503, 504}
_MAX_REDIRECTS = 5


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: attempts, backoff base/cap, floor, and a total time budget (seconds)."""

    max_attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 30.0
    floor_s: float = 0.2
    budget_s: float = 120.0


class RateLimiter:
    """At most ``rate`` acquisitions per second across every thread (evenly spaced slots)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.interval = 1.0 / rate
        self._clock = clock
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Wait for the next free slot; the wait is bounded by (callers ahead) x interval."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


class _Retryable(Exception):
    """Internal: a transient failure worth another attempt."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class BatchClient:
    """Client for the batch API (``/v0/batch/jobs``...)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: tuple[float, float] = (10.0, 60.0),
        retry: RetryPolicy | None = None,
        max_rps: float = DEFAULT_MAX_RPS,
        pool_size: int = 16,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._origin = _origin(self.base_url)
        self._key = api_key
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.limiter = RateLimiter(max_rps)
        self._sleep = sleep
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"jobtracker/{__version__}"
        if not any(name.lower().endswith("_proxy") for name in os.environ):
            # With no proxy configured, skip requests' per-request scan of the environment
            # (proxies, netrc, CA bundle: ~0.1 ms each); a CA bundle from the environment is
            # still honoured. With a proxy set, requests keeps doing it all, NO_PROXY included.
            self.session.trust_env = False
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            if bundle:
                self.session.verify = bundle
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._count_lock = threading.Lock()
        self.requests_made = 0

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- endpoints ------------------------------------------------------------------------

    def list_jobs(
        self,
        *,
        limit: int | None = None,
        status: Sequence[str] | None = None,
        when: str | None = None,
        timestamp_ms: int | None = None,
        sort_by: str | None = None,
        direction: str | None = None,
    ) -> list[Any]:
        """``GET /v0/batch/jobs``: one page of jobs (current shape), as decoded JSON."""
        params: list[tuple[str, str]] = []
        if limit is not None:
            params.append(("limit", str(limit)))
        params.extend(("status", s) for s in status or ())
        if when is not None:
            params.append(("when", when))
        if timestamp_ms is not None:
            params.append(("timestamp_ms", str(timestamp_ms)))
        if sort_by is not None:
            params.append(("sort_by", sort_by))
        if direction is not None:
            params.append(("direction", direction))
        data = self.get_json("/v0/batch/jobs", params=params)
        if not isinstance(data, list):
            raise ApiError("job list: expected a JSON array", url=self.base_url + "/v0/batch/jobs")
        return data

    def get_job(self, job_id: str) -> Any:
        """``GET /v0/batch/jobs/{id}``: the job's details (either shape)."""
        return self.get_json(f"/v0/batch/jobs/{_quote_id(job_id)}")

    def get_predictions(self, job_id: str) -> Any:
        """``GET /v0/batch/jobs/{id}/predictions``: the predictions JSON."""
        return self.get_json(f"/v0/batch/jobs/{_quote_id(job_id)}/predictions")

    def job_file_url(self, job_id: str, kind: str) -> str:
        """Absolute URL of a job's ``predictions`` or ``artifacts`` endpoint."""
        return f"{self.base_url}/v0/batch/jobs/{_quote_id(job_id)}/{kind}"

    # --- transport ------------------------------------------------------------------------

    def get_json(self, path: str, *, params: Sequence[tuple[str, str]] | None = None) -> Any:
        """GET an API path and decode JSON, with retries; raises AuthError/JobNotFound/ApiError."""
        url = self.base_url + path

        def attempt() -> Any:
            response = self.send("GET", url, params=params)
            with response:
                try:
                    body = response.content
                except (requests.exceptions.ChunkedEncodingError, requests.ConnectionError) as exc:
                    raise _Retryable(f"body cut short: {type(exc).__name__}") from None
                self._raise_for_status(response, body, url)
                try:
                    return response.json() if body else None
                except ValueError:
                    raise _Retryable("answer is not valid JSON", response.status_code) from None

        return self.with_retries(attempt, url)

    def with_retries(self, attempt: Callable[[], Any], url: str) -> Any:
        """Run ``attempt`` until it returns, retrying transient failures within the policy."""
        policy = self.retry
        started = time.monotonic()
        last: str = ""
        for number in range(1, policy.max_attempts + 1):
            try:
                return attempt()
            except requests.Timeout:
                last = "timed out"
                retry_after = None
            except requests.ConnectionError as exc:
                last = f"connection failed ({type(exc).__name__})"
                retry_after = None
            except (
                requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError,
            ) as exc:
                last = f"body cut short ({type(exc).__name__})"
                retry_after = None
            except _Retryable as exc:
                last = str(exc)
                retry_after = exc.retry_after
            if number == policy.max_attempts:
                break
            backoff = random.uniform(0, min(policy.cap_s, policy.base_s * 2 ** (number - 1)))
            delay = max(policy.floor_s, retry_after if retry_after is not None else backoff)
            if time.monotonic() - started + delay > policy.budget_s:
                last += f"; retry budget of {policy.budget_s:.0f}s used up"
                break
            log.info("retrying %s in %.2fs after: %s", redact_url(url), delay, last)
            self._sleep(delay)
        raise ApiError(
            f"{redact_url(url)}: {last} (gave up after {number} attempt(s))", url=redact_url(url)
        )

    def send(
        self,
        method: str,
        url: str,
        *,
        params: Sequence[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """One HTTP exchange, following redirects by hand; the key goes only to the API origin.

        5xx and 429 answers raise the internal retry signal; everything else is returned.
        """
        current = url
        for _ in range(_MAX_REDIRECTS + 1):
            send_headers = dict(headers or {})
            if _origin(current) == self._origin:
                send_headers[API_KEY_HEADER] = self._key
            self.limiter.acquire()
            with self._count_lock:
                self.requests_made += 1
            started = time.monotonic()
            response = self.session.request(
                method,
                current,
                params=params,
                headers=send_headers,
                timeout=self.timeout,
                allow_redirects=False,
                stream=stream,
            )
            log.info(
                "%s %s -> %s (%.0f ms)",
                method,
                redact_url(response.url),
                response.status_code,
                (time.monotonic() - started) * 1000,
            )
            if response.is_redirect and "location" in response.headers:
                current = urljoin(current, response.headers["location"])
                params = None  # the Location carries its own query
                response.close()
                continue
            if response.status_code in _RETRY_STATUSES:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                status = response.status_code
                response.close()
                raise _Retryable(f"HTTP {status}", status, retry_after)
            return response
        raise ApiError(f"{redact_url(url)}: too many redirects", url=redact_url(url))

    def _raise_for_status(self, response: requests.Response, body: bytes, url: str) -> None:
        status = response.status_code
        if status == 401 or (status >= 400 and b"Invalid ApiKey" in body[:2000]):
            raise AuthError("the API rejected the API key (Invalid ApiKey); check HUME_API_KEY")
        if status == 404:
            raise JobNotFound(
                f"{redact_url(url)}: not found (404)", status=404, url=redact_url(url)
            )
        if status >= 400:
            snippet = body[:200].decode("utf-8", "replace").replace("\n", " ")
            raise ApiError(
                f"{redact_url(url)}: HTTP {status}: {snippet}", status=status, url=redact_url(url)
            )


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.netloc.rsplit("@", 1)[-1]).lower()


def _quote_id(job_id: str) -> str:
    """A job id as one path segment: everything escaped, dots too when the id is all dots.

    ``quote`` leaves ``.`` alone, and a segment of ``.`` or ``..`` would be removed by URL
    normalisation (``/jobs/../predictions`` is ``/predictions``).
    """
    quoted = quote(job_id, safe="")
    return quoted.replace(".", "%2E") if set(quoted) <= {"."} else quoted
