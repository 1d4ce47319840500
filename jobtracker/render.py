"""Render rows as a table, JSON or CSV. Touches neither the database nor the network.

Times are printed as ISO-8601 UTC (``2024-04-08T14:39:18.717Z``). Every value under a key that
names a URL is passed through :func:`~jobtracker.urls.redact_url`, so a signed URL's signature
never reaches the terminal or a log.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import IO, Any, Literal

from jobtracker.urls import redact_url

Format = Literal["table", "json", "csv"]
FORMATS = ("table", "json", "csv")
_MAX_CELL = 60


def iso(value: datetime | None) -> str | None:
    """ISO-8601 UTC with a ``Z`` suffix, or ``None``."""
    if value is None:
        return None
    text = value.isoformat(timespec="milliseconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _is_url_key(key: str) -> bool:
    return key == "urls" or key.endswith("_url") or key == "url"


def clean(value: Any, key: str = "") -> Any:
    """A JSON-ready copy of ``value``: datetimes as ISO text, URLs redacted."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Mapping):
        return {str(k): clean(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v, key) for v in value]
    if isinstance(value, str) and _is_url_key(key):
        return redact_url(value)
    return value


def render(
    rows: Iterable[Mapping[str, Any]],
    fmt: Format,
    out: IO[str],
    columns: Sequence[str] | None = None,
) -> None:
    """Write ``rows`` to ``out`` in ``fmt``; ``columns`` picks and orders table/CSV columns."""
    if fmt == "json":
        _json_rows(rows, out)
    elif fmt == "csv":
        _csv_rows(rows, out, columns)
    else:
        _table_rows(rows, out, columns)


def render_one(row: Mapping[str, Any], fmt: Format, out: IO[str]) -> None:
    """Write one record: a JSON object, a two-column CSV, or ``key: value`` lines."""
    data = clean(row)
    if fmt == "json":
        json.dump(data, out, indent=2, ensure_ascii=False)
        out.write("\n")
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(["field", "value"])
        for key, value in data.items():
            writer.writerow([key, _cell(value, limit=None)])
    else:
        width = max((len(k) for k in data), default=0)
        for key, value in data.items():
            out.write(f"{key.ljust(width)}  {_cell(value, limit=None)}\n")


def _json_rows(rows: Iterable[Mapping[str, Any]], out: IO[str]) -> None:
    # Streamed item by item: a large listing never builds one big string.
    out.write("[")
    first = True
    for row in rows:
        out.write("\n  " if first else ",\n  ")
        json.dump(clean(row), out, ensure_ascii=False)
        first = False
    out.write("\n]\n" if not first else "]\n")


def _cell(value: Any, limit: int | None = _MAX_CELL) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        text = ",".join(_cell(v, None) for v in value)
    elif isinstance(value, dict):
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    elif isinstance(value, float):
        text = f"{value:.3f}"
    else:
        text = str(value)
    text = text.replace("\n", " ")
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _csv_rows(
    rows: Iterable[Mapping[str, Any]], out: IO[str], columns: Sequence[str] | None
) -> None:
    writer: Any = None
    for row in rows:
        data = clean(row)
        if writer is None:
            writer = csv.DictWriter(out, fieldnames=list(columns or data), extrasaction="ignore")
            writer.writeheader()
        writer.writerow({k: _cell(v, None) for k, v in data.items()})


def _table_rows(
    rows: Iterable[Mapping[str, Any]], out: IO[str], columns: Sequence[str] | None
) -> None:
    cleaned = [clean(r) for r in rows]
    if not cleaned:
        out.write("(no rows)\n")
        return
    keys = list(columns or cleaned[0])
    cells = [[_cell(r.get(k)) for k in keys] for r in cleaned]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    out.write("  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for line in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n")
