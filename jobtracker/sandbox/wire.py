"""Transport-neutral request/response values and the helpers that build common answers.

Routes turn a :class:`Request` into a :class:`Response`; only ``server.py`` touches sockets.
Keeping the two apart lets the fault layer rewrite a finished :class:`Response` (truncate it,
corrupt it) without knowing anything about HTTP plumbing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from .content import Body, BytesBody

JSON_TYPE = "application/json"
XML_TYPE = "application/xml; charset=UTF-8"
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed HTTP request.

    ``path`` is the raw, still percent-encoded path (so ``%2F`` inside a job id survives
    routing); ``headers`` keys are lower-cased.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup."""
        return self.headers.get(name.lower())


@dataclass(slots=True)
class Response:
    """An answer to send: status, headers and a (possibly sliced) body.

    ``start``/``stop`` select the bytes of ``body`` to send (a Range answer).  ``declared_length``
    overrides ``Content-Length`` and ``close`` drops the connection afterwards: together they make
    a truncated response.
    """

    status: int
    body: Body
    content_type: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    start: int = 0
    stop: int | None = None
    declared_length: int | None = None
    close: bool = False
    fault: str | None = None

    @property
    def end(self) -> int:
        """Exclusive end offset of the bytes to send."""
        return self.body.size if self.stop is None else self.stop

    @property
    def length(self) -> int:
        """Number of body bytes actually sent."""
        return self.end - self.start


def json_response(
    status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> Response:
    """Serialise ``payload`` as compact JSON."""
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(status, BytesBody(data), JSON_TYPE, list(headers or []))


def text_response(status: int, text: str, content_type: str) -> Response:
    """A UTF-8 text body of the given content type."""
    return Response(status, BytesBody(text.encode()), content_type)


def gcs_error(status: int, code: str, message: str, details: str | None = None) -> Response:
    """An XML error body the way Google Cloud Storage words it."""
    xml = (
        "<?xml version='1.0' encoding='UTF-8'?><Error>"
        f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
    )
    if details is not None:
        xml += f"<Details>{escape(details)}</Details>"
    xml += "</Error>"
    return text_response(status, xml, XML_TYPE)


def file_response(
    body: Body, content_type: str, request: Request, extra: Mapping[str, str] | None = None
) -> Response:
    """A downloadable body honouring a single ``Range: bytes=a-b`` / ``bytes=a-`` / ``bytes=-n``.

    Unparseable or multi-range headers are ignored (a full 200), as RFC 9110 allows; a range
    that starts past the end is a 416.
    """
    headers = [("Accept-Ranges", "bytes"), *(extra or {}).items()]
    header = request.header("Range")
    match = _RANGE.match(header) if header else None
    size = body.size
    if match is None or (not match.group(1) and not match.group(2)):
        return Response(200, body, content_type, headers)
    first, last = match.group(1), match.group(2)
    if first:
        start = int(first)
        stop = min(size, int(last) + 1) if last else size
    else:  # suffix range: the last N bytes
        start = max(0, size - int(last))
        stop = size
    if start >= size or stop <= start:
        headers.append(("Content-Range", f"bytes */{size}"))
        refused = text_response(416, "requested range not satisfiable", "text/plain")
        refused.headers.extend(headers)
        return refused
    headers.append(("Content-Range", f"bytes {start}-{stop - 1}/{size}"))
    return Response(206, body, content_type, headers, start=start, stop=stop)
