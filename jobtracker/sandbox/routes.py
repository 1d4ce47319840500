"""What each sandbox host answers: the batch API host and the result-storage host.

:class:`Backend` holds the sandbox state the routes need and turns a :class:`Request` into a
:class:`Response`, applying injected faults around the normal answer.  It never touches sockets.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from .clock import ClockFn, to_ms
from .content import CONTENT_TYPES, FILE_NAMES, BytesBody, ResultFiles
from .faults import Fault, FaultInjector
from .jobs import COMPLETED, ResultUrls, SimJob, render_current, render_legacy
from .requestlog import RequestLog, RequestRecord
from .signing import UrlSigner, Verdict
from .store import JobStore, QueryError, parse_list_query
from .wire import (
    JSON_TYPE,
    Request,
    Response,
    file_response,
    gcs_error,
    json_response,
    text_response,
)

API_PREFIX = "/v0/batch/jobs"
INVALID_KEY_BODY = {
    "fault": {"faultstring": "Invalid ApiKey", "detail": {"errorcode": "oauth.v2.InvalidApiKey"}}
}
_FILE_KINDS = {name: kind for kind, name in FILE_NAMES.items()}
_READ_METHODS = ("GET", "HEAD")
_HTML_ERROR = (
    "<html><head><title>{status} {reason}</title></head><body><center><h1>{status} {reason}"
    "</h1></center><hr><center>nginx</center></body></html>"
)
_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
_MALFORMED_BODIES = (
    b'{"job_id": "',  # cut off mid-string
    b"<html><body>upstream connect error</body></html>",  # a proxy page sent as JSON
    b"{'status': 'COMPLETED'}",  # Python repr, not JSON
)


def _not_found() -> Response:
    return json_response(404, {"message": "job not found"})


@dataclass(slots=True)
class Backend:
    """Sandbox state as seen by the routes; ``storage_url`` is filled in once bound."""

    api_key: str
    store: JobStore
    files: ResultFiles
    signer: UrlSigner
    clock: ClockFn
    log: RequestLog
    injector: FaultInjector
    url_ttl_s: float
    storage_url: str = ""

    def now_ms(self) -> int:
        """The sandbox clock in epoch milliseconds."""
        return to_ms(self.clock())

    # --- entry points -------------------------------------------------------------------------

    def handle(self, role: str, request: Request) -> Response:
        """Answer one request on host ``role`` (``"api"`` or ``"storage"``)."""
        return self._api(request) if role == "api" else self._storage(request)

    def log_request(
        self, role: str, request: Request, response: Response, raw_headers: dict[str, str]
    ) -> None:
        """Record a request (called before the body is sent, so tests never race the log)."""
        self.log.append(
            RequestRecord(
                role=role,
                method=request.method,
                path=request.path,
                query=request.query,
                headers=raw_headers,
                status=response.status,
                time=self.clock(),
                wall_time=time.time(),
                fault=response.fault,
            )
        )

    def signed_url(self, job_id: str, kind: str, expires: int | None = None) -> str:
        """A signed storage URL for a result file, valid for ``url_ttl_s`` from now by default."""
        if expires is None:
            expires = int(self.clock() + self.url_ttl_s)
        path = f"/results/{quote(job_id, safe='')}/{FILE_NAMES[kind]}"
        return self.storage_url + self.signer.sign(path, expires)

    # --- API host -----------------------------------------------------------------------------

    def _api(self, request: Request) -> Response:
        key = request.header("X-Hume-Api-Key") or ""
        # Compare bytes: header values may hold any latin-1 text, compare_digest wants ASCII str.
        if not hmac.compare_digest(key.encode("utf-8", "replace"), self.api_key.encode()):
            return json_response(401, INVALID_KEY_BODY)
        fault = self.injector.draw("api")
        early = _early_fault(fault, xml=False)
        if early is not None:
            return early
        response = self._route_api(request, stale=fault is not None and fault.kind == "stale")
        return _late_fault(fault, response)

    def _route_api(self, request: Request, *, stale: bool) -> Response:
        path = request.path
        if request.method not in _READ_METHODS:
            return json_response(405, {"message": f"method {request.method} not allowed"})
        if path in (API_PREFIX, API_PREFIX + "/"):
            return self._list(request)
        if not path.startswith(API_PREFIX + "/"):
            return json_response(404, {"message": "not found"})
        # Split the still-encoded path so that an id holding "%2F" stays one segment.
        parts = path[len(API_PREFIX) + 1 :].split("/")
        job = self.store.get(unquote(parts[0]))
        if len(parts) == 1:
            return self._detail(job, stale=stale)
        if len(parts) == 2 and parts[1] in ("predictions", "artifacts"):
            return self._result(job, parts[1], request)
        return json_response(404, {"message": "not found"})

    def _list(self, request: Request) -> Response:
        now_ms = self.now_ms()
        try:
            query = parse_list_query(request.query, now_ms)
        except QueryError as exc:
            return json_response(400, {"message": str(exc)})
        jobs = self.store.list_jobs(query, now_ms)
        return json_response(200, [render_current(job, now_ms) for job in jobs])

    def _detail(self, job: SimJob | None, *, stale: bool) -> Response:
        if job is None:
            return _not_found()
        now_ms = self.now_ms()
        # Only a finished job can be stale; record the fault only when it changed the answer.
        stale = stale and job.is_terminal_at(now_ms)
        if not job.legacy:
            response = json_response(200, render_current(job, now_ms, stale=stale))
            response.fault = "stale" if stale else None
            return response
        urls = None
        if job.status_at(now_ms) == COMPLETED and not stale:
            urls = ResultUrls(
                predictions_url=self.signed_url(job.job_id, "predictions"),
                artifacts_url=self.signed_url(job.job_id, "artifacts"),
                errors_url=self.signed_url(job.job_id, "errors"),
            )
        response = json_response(200, render_legacy(job, now_ms, urls, stale=stale))
        response.fault = "stale" if stale else None
        return response

    def _result(self, job: SimJob | None, kind: str, request: Request) -> Response:
        if job is None:
            return _not_found()
        status = job.status_at(self.now_ms())
        if status != COMPLETED:
            message = f"job {job.job_id} is {status}; {kind} exist only for COMPLETED jobs"
            return json_response(400, {"message": message})
        body = self.files.body(job, kind)
        if kind == "predictions":
            return Response(200, body, JSON_TYPE)
        disposition = {"Content-Disposition": 'attachment; filename="artifacts.zip"'}
        return file_response(body, CONTENT_TYPES[kind], request, disposition)

    # --- storage host -------------------------------------------------------------------------

    def _storage(self, request: Request) -> Response:
        # Deliberately no API-key check: signed URLs are bearer tokens, and a client that sends
        # its API key here leaks it to a third party (the request log lets tests catch that).
        fault = self.injector.draw("storage")
        early = _early_fault(fault, xml=True)
        if early is not None:
            return early
        return _late_fault(fault, self._route_storage(request))

    def _route_storage(self, request: Request) -> Response:
        if request.method not in _READ_METHODS:
            return gcs_error(405, "MethodNotAllowed", "The specified method is not allowed.")
        parts = request.path.split("/")
        if len(parts) != 4 or parts[1] != "results" or parts[3] not in _FILE_KINDS:
            return gcs_error(404, "NoSuchKey", "The specified key does not exist.")
        verdict = self.signer.verify(request.path, request.query, self.clock())
        if verdict is Verdict.MISSING:
            return gcs_error(
                403, "AccessDenied", "Access denied.", "Anonymous caller does not have access."
            )
        if verdict is Verdict.BAD_SIGNATURE:
            return gcs_error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        if verdict is Verdict.EXPIRED:
            expires = int(request.query["Expires"][-1])
            at = datetime.fromtimestamp(expires, tz=UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
            return gcs_error(
                400, "ExpiredToken", "The provided token has expired.",
                f"Request signature expired at: {at}",
            )  # fmt: skip
        job = self.store.get(unquote(parts[2]))
        if job is None or job.status_at(self.now_ms()) != COMPLETED:
            return gcs_error(404, "NoSuchKey", "The specified key does not exist.")
        kind = _FILE_KINDS[parts[3]]
        return file_response(self.files.body(job, kind), CONTENT_TYPES[kind], request)


def _early_fault(fault: Fault | None, *, xml: bool) -> Response | None:
    """Faults that replace the answer outright (5xx, 429) or delay it (slow)."""
    if fault is None:
        return None
    response: Response | None = None
    if fault.kind == "5xx":
        reason = _REASONS[fault.status]
        if xml:
            response = gcs_error(fault.status, "InternalError", "We encountered an internal error.")
        elif fault.html:
            page = _HTML_ERROR.format(status=fault.status, reason=reason)
            response = text_response(fault.status, page, "text/html")
        else:
            response = json_response(fault.status, {"message": reason})
    elif fault.kind == "429":
        headers = [("Retry-After", fault.retry_after_header())]
        response = json_response(429, {"message": "Too Many Requests"}, headers)
    elif fault.kind == "slow":
        time.sleep(fault.slow_s)  # real time: the client's timeouts are real too
    if response is not None:
        response.fault = fault.kind
    return response


def _late_fault(fault: Fault | None, response: Response) -> Response:
    """Faults that corrupt a computed answer (malformed, truncated) or just get recorded."""
    if fault is None or fault.kind == "stale":
        return response  # a stale answer is decided (and recorded) by the job-detail route
    if fault.kind == "malformed":
        body = _MALFORMED_BODIES[fault.variant % len(_MALFORMED_BODIES)]
        response = Response(200, BytesBody(body), JSON_TYPE)
    elif fault.kind == "truncated":
        full = response.length
        # Promise the whole body, send half of it, then hang up: an IncompleteRead for the client.
        response.declared_length = max(full, 1)
        response.stop = response.start + full // 2
        response.close = True
    response.fault = fault.kind
    return response
