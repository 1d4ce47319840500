"""Read job payloads from files or stdin: a JSON object, a JSON array, or JSON Lines.

Records are yielded one at a time with where they came from (``file:line``), so a 1,000,000-line
JSON Lines file or a large array is never held in memory whole. A record that is not valid JSON is
yielded as a :class:`BadRecord` and reading goes on with the next line (JSON Lines); inside an
array or a single document there is no next record to resync to, so the rest of that file is
reported as unreadable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

_CHUNK = 1 << 16


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
    name = "<stdin>" if str(source) == "-" else str(source)
    if str(source) == "-":
        yield from _read_stream(sys.stdin, name)
        return
    try:
        handle = Path(source).open(encoding="utf-8")  # noqa: SIM115 - closed below, in a generator
    except OSError as exc:
        yield BadRecord(name, f"cannot open: {exc.strerror or exc}")
        return
    with handle:
        try:
            yield from _read_stream(handle, name)
        except UnicodeDecodeError as exc:
            yield BadRecord(name, f"not UTF-8 text ({exc.reason} at byte {exc.start})")


def _read_stream(stream: IO[str], name: str) -> Iterator[Record | BadRecord]:
    first = stream.readline()
    line_no = 1
    while first and not first.strip():
        first = stream.readline()
        line_no += 1
    if not first:
        return
    stripped = first.lstrip()
    if stripped.startswith("["):
        yield from _read_array(first, stream, name, line_no)
        return
    try:
        payload = json.loads(first)
    except json.JSONDecodeError:
        # Not one value per line: a single (pretty-printed) document.
        yield from _read_document(first + stream.read(), name, line_no)
        return
    yield Record(f"{name}:{line_no}", payload)
    for line in stream:
        line_no += 1
        if not line.strip():
            continue
        try:
            yield Record(f"{name}:{line_no}", json.loads(line))
        except json.JSONDecodeError as exc:
            yield BadRecord(f"{name}:{line_no}", f"invalid JSON: {exc.msg} at column {exc.colno}")


def _read_document(text: str, name: str, first_line: int) -> Iterator[Record | BadRecord]:
    try:
        yield Record(f"{name}:{first_line}", json.loads(text))
    except json.JSONDecodeError as exc:
        yield BadRecord(
            f"{name}:{first_line + exc.lineno - 1}",
            f"invalid JSON: {exc.msg} at column {exc.colno}",
        )


def _read_array(
    first: str, stream: IO[str], name: str, line_no: int
) -> Iterator[Record | BadRecord]:
    """Decode array items one by one with ``raw_decode`` over a sliding buffer."""
    decoder = json.JSONDecoder()
    buf = first[first.index("[") + 1 :]
    line = line_no  # line number of buf[0]
    pos = 0
    index = 0
    eof = False
    expect_item = True
    while True:
        # Skip whitespace and one separator, keeping the line count.
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                if buf[pos] == "\n":
                    line += 1
                pos += 1
            if pos < len(buf) or eof:
                break
            chunk = stream.read(_CHUNK)
            buf, pos, eof = buf[pos:] + chunk, 0, not chunk
        if pos >= len(buf):
            yield BadRecord(f"{name}:{line}", "unexpected end of file inside a JSON array")
            return
        char = buf[pos]
        if char == "]":
            return
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
        except json.JSONDecodeError as exc:
            if not eof:
                # The item may just be cut by the chunk boundary: read more and retry.
                chunk = stream.read(_CHUNK)
                buf, pos, eof = buf[pos:] + chunk, 0, not chunk
                continue
            yield BadRecord(
                f"{name}:{line}",
                f"invalid JSON in array item {index + 1}: {exc.msg}; rest of file skipped",
            )
            return
        index += 1
        yield Record(f"{name}:{line} (item {index})", value)
        line += buf.count("\n", pos, end)
        pos = end
        expect_item = False
        if pos > _CHUNK:
            buf, pos = buf[pos:], 0
