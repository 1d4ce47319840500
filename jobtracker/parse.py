"""Turn a batch-API job payload (either shape) into a :class:`JobResult`.

Pure: no I/O. Two shapes exist:

* legacy (2022): ``status``, ``creation_timestamp``/``completion_timestamp`` in epoch seconds,
  ``completed{...signed urls, counts}``, ``failed{message}``; the payload carries no job id.
* current: ``job_id``, ``request{...}``, ``state{status, *_timestamp_ms, counts, message}``,
  ``type``.

Anything else raises :class:`ParseError` with a short summary of what was found (never the
whole payload, which can be large and holds signed URLs); the ``Invalid ApiKey`` fault raises
:class:`AuthError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from jobtracker.errors import AuthError, ParseError
from jobtracker.results import JobResult, JobStatus

#: Bumped whenever parsing changes what it extracts, so stored payloads can be re-parsed.
PARSER_VERSION = 1

# 9999-12-31T23:59:59.999Z: the last instant a datetime can hold.
_MAX_MS = 253_402_300_799_999
# Counts are stored in 32-bit INTEGER columns (PostgreSQL's int4).
_MAX_COUNT = 2**31 - 1
# Payload text quoted in an error message is cut to this many characters.
_SHOWN = 40


def _cut(text: str) -> str:
    """A payload string short enough to quote in an error message."""
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


_STATUSES = {s.value: s for s in JobStatus}


def summarize(value: Any) -> str:
    """Describe a JSON value briefly for an error message, without dumping it."""
    if isinstance(value, Mapping):
        keys = sorted(_cut(str(k)) for k in value)
        shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
        return f"an object with keys [{shown}]"
    if isinstance(value, list):
        return f"an array of {len(value)} item(s)"
    if isinstance(value, str):
        return f"a string of {len(value)} character(s)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return f"a {type(value).__name__}"


class _Reader:
    """Typed access to one payload; errors name the field path and the job."""

    def __init__(self, job_id: str | None) -> None:
        self.job_id = job_id

    def fail(self, path: str, expected: str, value: Any) -> ParseError:
        return ParseError(
            f"{path}: expected {expected}, got {summarize(value)}", job_id=self.job_id
        )

    def obj(
        self, parent: Mapping[str, Any], key: str, path: str, *, required: bool
    ) -> Mapping[str, Any]:
        value = parent.get(key)
        if value is None:
            if required:
                raise ParseError(f"{path}: missing", job_id=self.job_id)
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(path, "an object", value)
        return value

    def opt_str(self, parent: Mapping[str, Any], key: str, path: str) -> str | None:
        value = parent.get(key)
        if value is None or isinstance(value, str):
            return value
        raise self.fail(path, "a string or null", value)

    def opt_bool(self, parent: Mapping[str, Any], key: str, path: str) -> bool | None:
        value = parent.get(key)
        if value is None or isinstance(value, bool):
            return value
        raise self.fail(path, "true, false or null", value)

    def opt_count(self, parent: Mapping[str, Any], key: str, path: str) -> int | None:
        value = parent.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
            raise self.fail(path, f"an integer from 0 to {_MAX_COUNT}", value)
        return value

    def opt_time(
        self, parent: Mapping[str, Any], key: str, path: str, *, unit_ms: int
    ) -> int | None:
        value = parent.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, "an epoch timestamp (number)", value)
        # Range-check before any float arithmetic: a huge int would overflow it.
        finite = isinstance(value, int) or math.isfinite(value)
        if not finite or not 0 <= value <= _MAX_MS // unit_ms:
            raise ParseError(f"{path}: timestamp out of range", job_id=self.job_id)
        return round(value * unit_ms)

    def str_list(self, parent: Mapping[str, Any], key: str, path: str) -> list[str]:
        value = parent.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(path, "an array of strings", value)
        return list(value)

    def obj_list(self, parent: Mapping[str, Any], key: str, path: str) -> list[dict[str, Any]]:
        value = parent.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise self.fail(path, "an array of objects", value)
        return [dict(v) for v in value]

    def status(self, value: Any, path: str) -> JobStatus:
        if not isinstance(value, str):
            raise self.fail(path, "a status string", value)
        status = _STATUSES.get(value.upper())
        if status is None:
            known = ", ".join(_STATUSES)
            raise ParseError(
                f"{path}: unknown status {_cut(value)!r} (known: {known})", job_id=self.job_id
            )
        return status

    def configs(self, request: Mapping[str, Any], path: str) -> dict[str, dict[str, Any]]:
        models = self.obj(request, "models", path, required=False)
        configs: dict[str, dict[str, Any]] = {}
        for name, config in models.items():
            if config is None:
                config = {}
            if not isinstance(config, Mapping):
                raise self.fail(f"{path}.{_cut(str(name))}", "a config object or null", config)
            configs[str(name)] = dict(config)
        return configs


def parse_response(payload: Any, job_id: str | None = None) -> JobResult:
    """Parse one job payload of either shape into a :class:`JobResult`.

    ``job_id`` names the job when the payload carries no id (the legacy shape never does); when
    both are given they must agree. Raises :class:`AuthError` for the ``Invalid ApiKey`` fault
    and :class:`ParseError` for anything else that is not a job.
    """
    if not isinstance(payload, Mapping):
        raise ParseError(f"expected a job object, got {summarize(payload)}", job_id=job_id)
    _raise_for_fault(payload, job_id)
    own_id = payload.get("job_id")
    if own_id is not None:
        if not isinstance(own_id, str) or not own_id:
            raise ParseError(f"job_id: expected a non-empty string, got {summarize(own_id)}")
        if job_id is not None and job_id != own_id:
            raise ParseError(
                f"payload is for job {_cut(own_id)!r}, not {_cut(job_id)!r}", job_id=job_id
            )
        job_id = own_id
    if isinstance(payload.get("state"), Mapping):
        return _parse_current(payload, _Reader(job_id))
    if "status" in payload:
        return _parse_legacy(payload, _Reader(job_id))
    raise ParseError(
        f"not a batch job payload (no 'state' or 'status'): got {summarize(payload)}",
        job_id=job_id,
    )


def _raise_for_fault(payload: Mapping[str, Any], job_id: str | None) -> None:
    fault = payload.get("fault")
    if not isinstance(fault, Mapping):
        return
    text = fault.get("faultstring")
    if text == "Invalid ApiKey":
        raise AuthError("the API rejected the API key (Invalid ApiKey); check HUME_API_KEY")
    shown = text[:200] if isinstance(text, str) else summarize(text)
    raise ParseError(f"the API answered with a fault instead of a job: {shown}", job_id=job_id)


def _parse_request(payload: Mapping[str, Any], r: _Reader, result: JobResult) -> None:
    request = r.obj(payload, "request", "request", required=False)
    result.configs = r.configs(request, "request.models")
    result.urls = r.str_list(request, "urls", "request.urls")
    result.files = r.obj_list(request, "files", "request.files")
    result.text = r.str_list(request, "text", "request.text")
    result.callback_url = r.opt_str(request, "callback_url", "request.callback_url")
    result.notify = r.opt_bool(request, "notify", "request.notify")


def _parse_current(payload: Mapping[str, Any], r: _Reader) -> JobResult:
    state = r.obj(payload, "state", "state", required=True)
    result = JobResult(job_id=r.job_id, status=r.status(state.get("status"), "state.status"))
    _parse_request(payload, r, result)
    result.job_type = r.opt_str(payload, "type", "type")
    result.created_ms = r.opt_time(
        state, "created_timestamp_ms", "state.created_timestamp_ms", unit_ms=1
    )
    result.started_ms = r.opt_time(
        state, "started_timestamp_ms", "state.started_timestamp_ms", unit_ms=1
    )
    result.ended_ms = r.opt_time(state, "ended_timestamp_ms", "state.ended_timestamp_ms", unit_ms=1)
    result.num_predictions = r.opt_count(state, "num_predictions", "state.num_predictions")
    result.num_errors = r.opt_count(state, "num_errors", "state.num_errors")
    result.error_message = r.opt_str(state, "message", "state.message")
    result.shape = "current"
    return result


def _parse_legacy(payload: Mapping[str, Any], r: _Reader) -> JobResult:
    result = JobResult(job_id=r.job_id, status=r.status(payload.get("status"), "status"))
    _parse_request(payload, r, result)
    result.created_ms = r.opt_time(
        payload, "creation_timestamp", "creation_timestamp", unit_ms=1000
    )
    result.ended_ms = r.opt_time(
        payload, "completion_timestamp", "completion_timestamp", unit_ms=1000
    )
    completed = r.obj(payload, "completed", "completed", required=False)
    result.predictions_url = r.opt_str(completed, "predictions_url", "completed.predictions_url")
    result.artifacts_url = r.opt_str(completed, "artifacts_url", "completed.artifacts_url")
    result.errors_url = r.opt_str(completed, "errors_url", "completed.errors_url")
    result.num_predictions = r.opt_count(completed, "num_predictions", "completed.num_predictions")
    result.num_errors = r.opt_count(completed, "num_errors", "completed.num_errors")
    failed = r.obj(payload, "failed", "failed", required=False)
    result.error_message = r.opt_str(failed, "message", "failed.message")
    result.shape = "legacy"
    return result
