"""Fetch one result file to disk: streamed, verified, atomic, resumable.

The body streams into ``.<kind>.<ext>.part`` beside the target, in 1 MiB chunks (never whole in
memory) while its sha256 is computed. Only a body whose length matches ``Content-Length`` and
whose first bytes look like the expected type (a zip for artifacts, JSON for predictions) is
fsynced and renamed over the target; anything else is a failed attempt. A body cut short leaves
the ``.part`` file, and the next attempt asks for the rest with ``Range: bytes=N-``.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import requests

from jobtracker.client import BatchClient
from jobtracker.layout import fsync_dir, prepare_job_dir
from jobtracker.urls import redact_text, redact_url

CHUNK = 1 << 20
_HEAD = 64
#: Answers of a storage host to an expired or revoked signed URL.
EXPIRED_STATUSES = {400, 401, 403, 410}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True, slots=True)
class FetchTask:
    """One file to fetch: from a signed URL, or (``url`` None) from the API endpoint."""

    job_id: str
    kind: str
    url: str
    signed: bool
    path: Path


@dataclass(slots=True)
class FetchOutcome:
    """What one fetch did; ``error`` None means the file is in place."""

    task: FetchTask
    size: int = 0
    sha256: str | None = None
    error: str | None = None
    expired: bool = False
    bytes_read: int = 0


def part_path(path: Path) -> Path:
    """The temporary file a download streams into before its rename."""
    return path.with_name(f".{path.name}.part")


def fetch(client: BatchClient, task: FetchTask, *, attempts: int = 3) -> FetchOutcome:
    """Fetch ``task`` to its path; a body cut short is resumed up to ``attempts`` times."""
    outcome = FetchOutcome(task)
    for _ in range(attempts):
        outcome = _fetch_once(client, task)
        if outcome.error is None or outcome.expired or not outcome.error.startswith("cut short"):
            return outcome
    return outcome


def _fetch_once(client: BatchClient, task: FetchTask) -> FetchOutcome:
    part = part_path(task.path)
    prepare_job_dir(task.path.parent, task.job_id)
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    shown = redact_url(task.url) or task.url
    try:
        response = client.with_retries(
            lambda: client.send("GET", task.url, headers=headers, stream=True), task.url
        )
    except Exception as exc:  # noqa: BLE001 - every failure becomes a recorded attempt
        return FetchOutcome(task, error=_short(exc))
    with response:
        status = response.status_code
        if status == 416 and offset:
            # The .part already holds the whole body (killed between the last write and the
            # rename) or the file changed: start again from the first byte.
            part.unlink(missing_ok=True)
            return FetchOutcome(task, error="cut short: range not satisfiable; restarting")
        if status >= 400:
            snippet = _snippet(response)
            if task.signed and status in EXPIRED_STATUSES:
                return FetchOutcome(
                    task, error=f"HTTP {status} from storage: {snippet}", expired=True
                )
            return FetchOutcome(task, error=f"HTTP {status} from {shown}: {redact_text(snippet)}")
        if status not in (200, 206):
            return FetchOutcome(task, error=f"unexpected HTTP {status} from {shown}")
        kind_error = _content_type_error(task.kind, response.headers.get("Content-Type", ""))
        if kind_error:
            return FetchOutcome(task, error=kind_error)
        hasher = hashlib.sha256()
        mode = "wb"
        start = 0
        if status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if match and int(match[1]) == offset and offset:
                start, mode = offset, "ab"
                _hash_file(part, hasher)
            else:
                return FetchOutcome(task, error="server answered a range we did not ask for")
        length = response.headers.get("Content-Length")
        expected = start + int(length) if length and length.isdigit() else None
        received = start
        head = b""  # the body's first bytes, to check its type without reading the file again
        try:
            with part.open(mode) as out:
                for chunk in response.iter_content(CHUNK):
                    if len(head) < _HEAD and not start:
                        head += chunk[: _HEAD - len(head)]
                    out.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    if expected is not None and received > expected:
                        break
                out.flush()
                # The data and its size, not the access times: all a rename needs.
                (getattr(os, "fdatasync", None) or os.fsync)(out.fileno())
        except (requests.RequestException, OSError) as exc:
            # Keep the .part file: the next attempt resumes where this one stopped.
            return FetchOutcome(
                task,
                error=f"cut short after {received} bytes: {_short(exc)}",
                bytes_read=received - start,
            )
    if expected is not None and received != expected:
        part.unlink(missing_ok=True)
        return FetchOutcome(
            task,
            error=f"body is {received} bytes, Content-Length said {expected}",
            bytes_read=received - start,
        )
    if start:
        with part.open("rb") as handle:
            head = handle.read(_HEAD)
    magic_error = _magic_error(task.kind, head)
    if magic_error:
        part.unlink(missing_ok=True)
        return FetchOutcome(task, error=magic_error, bytes_read=received - start)
    os.replace(part, task.path)
    fsync_dir(task.path.parent)
    return FetchOutcome(task, size=received, sha256=hasher.hexdigest(), bytes_read=received - start)


def hash_file(path: Path) -> tuple[int, str]:
    """Size and sha256 of a file, read in chunks."""
    hasher = hashlib.sha256()
    size = _hash_file(path, hasher)
    return size, hasher.hexdigest()


def _hash_file(path: Path, hasher: hashlib._Hash) -> int:
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return size


def _content_type_error(kind: str, content_type: str) -> str | None:
    lowered = content_type.lower()
    if kind in ("predictions", "artifacts") and ("xml" in lowered or "html" in lowered):
        return f"expected a {kind} file, got an error document ({content_type})"
    return None


def _magic_error(kind: str, head: bytes) -> str | None:
    if kind == "artifacts" and not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "artifacts body is not a zip archive"
    if kind == "predictions" and head.lstrip()[:1] not in (b"[", b"{"):
        return "predictions body is not JSON"
    return None


def _snippet(response: requests.Response) -> str:
    try:
        raw = next(response.iter_content(300), b"")
    except requests.RequestException:
        return ""
    return raw.decode("utf-8", "replace").replace("\n", " ")[:200]


def _short(exc: BaseException) -> str:
    # Exception texts from urllib3 can quote the request URL, signature included.
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return redact_text(text)[:300]
