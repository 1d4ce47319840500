"""Reading job payloads from files (``jobtracker.sources.read_records``)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from jobtracker.sources import BadRecord, Record, read_records


def read(path: Path | str) -> list[Record | BadRecord]:
    return list(read_records(path))


def payload(n: int, filler: int = 0) -> dict[str, Any]:
    return {
        "job_id": f"job-{n:05d}",
        "state": {"status": "COMPLETED", "created_timestamp_ms": 1_700_000_000_000 + n},
        "request": {"text": ["é" * (n % 7), "x" * filler], "urls": [f"https://e.example/{n}"]},
    }


def test_json_lines_with_blank_lines_and_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(
        "\n".join(
            [
                "",
                json.dumps(payload(1)),
                "",
                json.dumps(payload(2)),
                "   ",
                '{"job_id": "broken", "state": ',
                json.dumps(payload(3)),
                "[1, 2]",
                "",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    records = read(path)

    assert [r.where for r in records] == [f"{path}:{n}" for n in (2, 4, 6, 7, 8)]
    first, second, bad, third, array = records
    assert isinstance(first, Record)
    assert first.payload == payload(1)
    assert isinstance(second, Record)
    assert second.payload == payload(2)
    assert isinstance(bad, BadRecord)
    assert bad.error.startswith("invalid JSON: Expecting value at column")
    assert isinstance(third, Record)
    assert third.payload == payload(3)
    # A later line holding an array is just a (non-job) value; parsing decides what it is.
    assert isinstance(array, Record)
    assert array.payload == [1, 2]


def test_json_lines_with_windows_line_endings(tmp_path: Path) -> None:
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(
        (json.dumps(payload(1)) + "\r\n" + "oops\r\n" + json.dumps(payload(2)) + "\r\n").encode()
    )
    records = read(path)
    assert [(type(r).__name__, r.where) for r in records] == [
        ("Record", f"{path}:1"),
        ("BadRecord", f"{path}:2"),
        ("Record", f"{path}:3"),
    ]


def test_a_pretty_printed_single_object(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text("\n\n" + json.dumps(payload(7), indent=2) + "\n", encoding="utf-8")
    records = read(path)
    assert len(records) == 1
    record = records[0]
    assert isinstance(record, Record)
    assert record.where == f"{path}:3"
    assert record.payload == payload(7)


def test_a_broken_pretty_printed_object_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "job_id": "a",\n  "state": \n}\n', encoding="utf-8")
    [record] = read(path)
    assert isinstance(record, BadRecord)
    assert record.where == f"{path}:4"
    assert record.error.startswith("invalid JSON: Expecting value")


def _array_file(path: Path, items: list[Any], indent: int | None) -> list[int]:
    """Write ``items`` as a JSON array and return the line each item starts on."""
    parts = [json.dumps(item, indent=indent, ensure_ascii=False) for item in items]
    starts = []
    line = 2
    for part in parts:
        starts.append(line)
        line += part.count("\n") + 1
    path.write_text("[\n" + ",\n".join(parts) + "\n]\n", encoding="utf-8")
    return starts


def test_a_large_pretty_printed_array_across_many_chunks(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    # Items of varying size so the 64 KiB chunk boundaries cut them at different places.
    items = [payload(n, filler=(n * 37) % 700) for n in range(900)]
    starts = _array_file(path, items, indent=2)
    assert path.stat().st_size > 200 * 1024

    records = read(path)

    assert len(records) == 900
    assert all(isinstance(r, Record) for r in records)
    assert [r.payload for r in records if isinstance(r, Record)] == items
    assert [r.where for r in records] == [
        f"{path}:{line} (item {n})" for n, line in enumerate(starts, 1)
    ]
    assert json.loads(path.read_text(encoding="utf-8")) == items


def test_a_large_single_line_array(tmp_path: Path) -> None:
    path = tmp_path / "compact.json"
    items = [payload(n, filler=n % 300) for n in range(1200)]
    path.write_text(json.dumps(items), encoding="utf-8")
    assert path.stat().st_size > 200 * 1024
    records = read(path)
    assert [r.payload for r in records if isinstance(r, Record)] == items
    assert [r.where for r in records] == [f"{path}:1 (item {n})" for n in range(1, 1201)]


def test_an_empty_array_and_an_empty_file(tmp_path: Path) -> None:
    empty_array = tmp_path / "empty-array.json"
    empty_array.write_text("  [ ]  \n", encoding="utf-8")
    empty = tmp_path / "empty.json"
    empty.write_text("", encoding="utf-8")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n\n", encoding="utf-8")
    assert read(empty_array) == []
    assert read(empty) == []
    assert read(blank) == []


def test_a_truncated_array(tmp_path: Path) -> None:
    cut_in_item = tmp_path / "cut.json"
    cut_in_item.write_text('[\n  {"job_id": "a"},\n  {"job_id": "b", "state": ', encoding="utf-8")
    records = read(cut_in_item)
    assert [type(r).__name__ for r in records] == ["Record", "BadRecord"]
    assert records[0].where == f"{cut_in_item}:2 (item 1)"
    bad = records[1]
    assert isinstance(bad, BadRecord)
    assert bad.where == f"{cut_in_item}:3"
    assert bad.error.startswith("invalid JSON in array item 2")
    assert "rest of file skipped" in bad.error

    cut_after_comma = tmp_path / "cut2.json"
    cut_after_comma.write_text('[\n  {"job_id": "a"},\n', encoding="utf-8")
    records = read(cut_after_comma)
    assert [type(r).__name__ for r in records] == ["Record", "BadRecord"]
    assert records[1].where == f"{cut_after_comma}:3"
    assert isinstance(records[1], BadRecord)
    assert records[1].error == "unexpected end of file inside a JSON array"


def test_a_truncated_large_array_keeps_the_items_before_the_cut(tmp_path: Path) -> None:
    path = tmp_path / "big-cut.json"
    items = [payload(n, filler=300) for n in range(600)]
    _array_file(path, items, indent=None)
    text = path.read_text(encoding="utf-8")
    # Cut inside item 401 (well past the first 64 KiB chunk).
    cut = text.index('"job-00400"') + 5
    assert cut > 2 * 65536
    path.write_text(text[:cut], encoding="utf-8")
    records = read(path)
    assert len(records) == 401
    assert all(isinstance(r, Record) for r in records[:-1])
    assert [r.payload for r in records[:-1] if isinstance(r, Record)] == items[:400]
    last = records[-1]
    assert isinstance(last, BadRecord)
    assert last.error.startswith("invalid JSON in array item 401")


def test_items_not_separated_by_commas(tmp_path: Path) -> None:
    path = tmp_path / "no-comma.json"
    path.write_text('[{"a": 1}\n {"b": 2}]', encoding="utf-8")
    records = read(path)
    assert isinstance(records[0], Record)
    assert isinstance(records[1], BadRecord)
    assert records[1].error == "expected ',' or ']' after item 1, got '{'"
    assert records[1].where == f"{path}:2"


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"job_id": "caf\u00e9"}\n'.encode("latin-1"))
    records = read(path)
    assert len(records) == 1
    record = records[0]
    assert isinstance(record, BadRecord)
    assert record.where == f"{path}:1"
    assert record.error.startswith("not UTF-8 text")


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "jobs.jsonl"
    records = read(path)
    assert len(records) == 1
    record = records[0]
    assert isinstance(record, BadRecord)
    assert record.where == str(path)
    assert record.error == "cannot open: No such file or directory"


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    [record] = read(tmp_path)
    assert isinstance(record, BadRecord)
    assert record.error.startswith("cannot open")


def test_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    text = json.dumps(payload(1)) + "\n" + json.dumps(payload(2)) + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    records = read("-")
    assert [r.where for r in records] == ["<stdin>:1", "<stdin>:2"]
    assert [r.payload for r in records if isinstance(r, Record)] == [payload(1), payload(2)]


def test_records_are_read_lazily(tmp_path: Path) -> None:
    path = tmp_path / "lazy.jsonl"
    path.write_text(json.dumps(payload(1)) + "\n" + json.dumps(payload(2)) + "\n")
    records = read_records(path)
    first = next(records)
    assert isinstance(first, Record)
    assert first.payload == payload(1)
    assert len(list(records)) == 1


def test_an_array_of_numbers_across_chunk_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "numbers.json"
    numbers = list(range(10**9, 10**9 + 30_000))
    path.write_text("[\n" + ",\n".join(str(n) for n in numbers) + "\n]\n", encoding="utf-8")
    records = read(path)
    assert [r.payload for r in records if isinstance(r, Record)] == numbers
    assert not [r for r in records if isinstance(r, BadRecord)]


def test_data_after_a_closing_bracket_is_not_dropped_silently(tmp_path: Path) -> None:
    path = tmp_path / "two-arrays.jsonl"
    path.write_text(
        json.dumps([payload(1)]) + "\n" + json.dumps([payload(2)]) + "\n", encoding="utf-8"
    )
    records = read(path)
    assert len(records) == 2
    assert records[1].where.startswith(f"{path}:2")


def test_a_bad_first_line_of_json_lines_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "bad-first.jsonl"
    path.write_text(
        '{"job_id": "broken"\n' + json.dumps(payload(1)) + "\n" + json.dumps(payload(2)) + "\n",
        encoding="utf-8",
    )
    records = read(path)
    assert [type(r).__name__ for r in records] == ["BadRecord", "Record", "Record"]
    assert [r.where for r in records] == [f"{path}:1", f"{path}:2", f"{path}:3"]


def test_a_non_utf8_line_in_json_lines_loses_only_that_line(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    good = [json.dumps(payload(n, filler=100)) for n in range(1000)]
    path.write_bytes(
        ("\n".join(good) + "\n").encode()
        + '{"job_id": "caf\u00e9"}\n'.encode("latin-1")
        + ("\n".join(good[:10]) + "\n").encode()
    )
    records = read(path)
    bad = [r for r in records if isinstance(r, BadRecord)]
    assert [r.where for r in bad] == [f"{path}:1001"]
    assert len(records) == 1011
