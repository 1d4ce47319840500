"""Read job payloads from files or stdin: a JSON object, a JSON array, or JSON Lines.

Records are yielded one at a time with where they came from (``file:line``), so a 1,000,000-line
JSON Lines file or a large array is never held in memory whole. Input is read as bytes and
decoded record by record (a UTF-8 byte-order mark is accepted), so one bad line — invalid JSON
or invalid UTF-8 — is reported as a :class:`BadRecord` and reading goes on with the next line.
Inside an array or a single document there is no next record to resync to, so the rest of that
file is reported as unreadable.
"""

from __future__ import annotations

import codecs
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

_CHUNK = 1 << 16
_BOM = codecs.BOM_UTF8


@dataclass(slots=True)
class Record:
    """One decoded payload and where it came from."""

    where: str
    payload: Any


@dataclass(slots=True)
class BadRecord:
    """A record that could not be decoded, with the reason."""

    where: str
    error: str


def read_records(source: str | Path) -> Iterator[Record | BadRecord]:
    """Yield every record of one file (``-`` means stdin), in order."""
    if str(source) == "-":
        raw = getattr(sys.stdin, "buffer", None)
        # A replaced sys.stdin (an embedding program, a test) may be text-only.
        stream = raw if raw is not None else io.BytesIO(sys.stdin.read().encode("utf-8"))
        yield from _read_stream(stream, "<stdin>")
        return
    name = str(source)
    try:
        handle = Path(source).open("rb")  # noqa: SIM115 - closed below, in a generator
    except OSError as exc:
        yield BadRecord(name, f"cannot open: {exc.strerror or exc}")
        return
    with handle:
        yield from _read_stream(handle, name)


def _decode(raw: bytes, where: str) -> str | BadRecord:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRecord(where, f"not UTF-8 text ({exc.reason} at byte {exc.start} of the line)")


def _read_stream(stream: IO[bytes], name: str) -> Iterator[Record | BadRecord]:
    line_no = 0
    first = b""
    while True:
        raw = stream.readline()
        if not raw:
            return
        line_no += 1
        if line_no == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        if raw.strip():
            first = raw
            break
    if first.lstrip().startswith(b"["):
        yield from _read_array(first, stream, name, line_no)
        return
    text = _decode(first, f"{name}:{line_no}")
    if isinstance(text, str):
        try:
            payload = json.loads(text)
        except json.JSONDecodeError:
            # Not one value per line: a single (pretty-printed) document, or JSON Lines whose
            # first line is broken.
            yield from _read_document(first, stream, name, line_no)
            return
        yield Record(f"{name}:{line_no}", payload)
    else:
        yield text
    yield from _read_lines(stream, name, line_no)


def _read_lines(stream: IO[bytes], name: str, line_no: int) -> Iterator[Record | BadRecord]:
    for raw in stream:
        line_no += 1
        if not raw.strip():
            continue
        where = f"{name}:{line_no}"
        text = _decode(raw, where)
        if isinstance(text, BadRecord):
            yield text
            continue
        try:
            yield Record(where, json.loads(text))
        except json.JSONDecodeError as exc:
            yield BadRecord(where, f"invalid JSON: {exc.msg} at column {exc.colno}")


def _read_document(
    first: bytes, stream: IO[bytes], name: str, first_line: int
) -> Iterator[Record | BadRecord]:
    rest = stream.read()
    try:
        text = (first + rest).decode("utf-8")
    except UnicodeDecodeError as exc:
        yield BadRecord(name, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
        return
    try:
        yield Record(f"{name}:{first_line}", json.loads(text))
        return
    except json.JSONDecodeError as exc:
        doc_error = BadRecord(
            f"{name}:{first_line + exc.lineno - 1}",
            f"invalid JSON: {exc.msg} at column {exc.colno}",
        )
    # Perhaps JSON Lines with a broken first line: if any later line is a JSON value on its
    # own, read it that way so the good records still land.
    lines = text.split("\n")
    later = [(i, line) for i, line in enumerate(lines[1:], first_line + 1) if line.strip()]
    if not any(_is_json(line) for _, line in later[:20]):
        yield doc_error
        return
    yield BadRecord(f"{name}:{first_line}", "invalid JSON: not a JSON value on its own line")
    for number, line in later:
        try:
            yield Record(f"{name}:{number}", json.loads(line))
        except json.JSONDecodeError as exc:
            yield BadRecord(f"{name}:{number}", f"invalid JSON: {exc.msg} at column {exc.colno}")


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


class _Text:
    """Decode a byte stream incrementally, keeping a buffer that can grow on demand."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.eof = False

    def more(self) -> str:
        """The next piece of text; '' at end of input. Raises UnicodeDecodeError."""
        if self.eof:
            return ""
        chunk = self.stream.read(_CHUNK)
        if not chunk:
            self.eof = True
            return self.decoder.decode(b"", final=True)
        return self.decoder.decode(chunk)


def _read_array(
    first: bytes, stream: IO[bytes], name: str, line_no: int
) -> Iterator[Record | BadRecord]:
    """Decode array items one by one with ``raw_decode`` over a sliding buffer."""
    decoder = json.JSONDecoder()
    source = _Text(stream)
    try:
        buf = first.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield BadRecord(f"{name}:{line_no}", f"not UTF-8 text ({exc.reason})")
        return
    buf = buf[buf.index("[") + 1 :]
    line = line_no  # line number of buf[pos]
    pos = 0
    index = 0
    expect_item = True
    closed = False
    try:
        while True:
            # Skip whitespace, keeping the line count; read more when the buffer runs out.
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    if buf[pos] == "\n":
                        line += 1
                    pos += 1
                if pos < len(buf) or source.eof:
                    break
                buf, pos = buf[pos:] + source.more(), 0
            if pos >= len(buf):
                if not closed:
                    yield BadRecord(f"{name}:{line}", "unexpected end of file inside a JSON array")
                return
            char = buf[pos]
            if closed:
                yield BadRecord(
                    f"{name}:{line}", "unexpected content after the JSON array; ignored"
                )
                return
            if char == "]":
                closed = True
                pos += 1
                continue
            if not expect_item:
                if char != ",":
                    yield BadRecord(
                        f"{name}:{line}", f"expected ',' or ']' after item {index}, got {char!r}"
                    )
                    return
                pos += 1
                expect_item = True
                continue
            try:
                value, end = decoder.raw_decode(buf, pos)
                # A value that ends exactly at the buffer's end may be cut (a number split by
                # the chunk boundary): decode it again with more text.
                complete = end < len(buf) or source.eof
            except json.JSONDecodeError as exc:
                if not source.eof:
                    buf, pos = buf[pos:] + source.more(), 0
                    continue
                yield BadRecord(
                    f"{name}:{line}",
                    f"invalid JSON in array item {index + 1}: {exc.msg}; rest of file skipped",
                )
                return
            if not complete:
                buf, pos = buf[pos:] + source.more(), 0
                continue
            index += 1
            yield Record(f"{name}:{line} (item {index})", value)
            line += buf.count("\n", pos, end)
            pos = end
            expect_item = False
            if pos > _CHUNK:
                buf, pos = buf[pos:], 0
    except UnicodeDecodeError as exc:
        yield BadRecord(f"{name}:{line}", f"not UTF-8 text ({exc.reason}); rest of file skipped")
