"""Where result files go: ``<dest>/<job dir>/<kind>.<ext>``, safe whatever the job id holds.

The job directory name is ``j-`` plus the id with every character outside ``[a-z0-9_-]``
percent-encoded as UTF-8 (upper-case letters too, as ``%4A``). So the name

* never contains ``/``, ``\\``, ``..``, NUL, control characters or a Windows-reserved name;
* is unique even on case-insensitive filesystems (only escapes use upper case, only literals use
  lower case, so two names that differ only in case decode to the same id);
* maps back to the id (:func:`job_id_from_dir`).

Ids whose encoding would pass 150 characters are cut, and end with ``~`` and a hash of the whole
id; the directory then holds a ``JOB_ID`` file naming the job. Every path is checked to be inside
``dest`` before use.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from urllib.parse import unquote

from jobtracker.errors import DownloadError

EXTENSIONS = {"predictions": "json", "artifacts": "zip", "errors": "txt"}
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
_MAX_NAME = 150
PREFIX = "j-"


def encode_job_id(job_id: str) -> str:
    """The reversible, filesystem-safe form of a job id (without the prefix)."""
    out = []
    for char in job_id:
        if char in _SAFE:
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


def job_dir_name(job_id: str) -> str:
    """Directory name for a job (see the module docstring)."""
    if not job_id:
        raise DownloadError("empty job id", job_id=job_id)
    encoded = encode_job_id(job_id)
    if len(encoded) > _MAX_NAME:
        digest = hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        encoded = encoded[:100].rstrip("%0123456789ABCDEF") + "~" + digest
    return PREFIX + encoded


def job_id_from_dir(path: Path) -> str:
    """The job id a job directory belongs to (reads ``JOB_ID`` for shortened names)."""
    name = path.name
    if not name.startswith(PREFIX):
        raise DownloadError(f"{name!r} is not a jobtracker job directory")
    if "~" in name:
        return (path / "JOB_ID").read_text(encoding="utf-8")
    return unquote(name[len(PREFIX) :], errors="surrogatepass")


def file_path(dest: Path, job_id: str, kind: str) -> Path:
    """``<dest>/<job dir>/<kind>.<ext>``, guaranteed to lie inside ``dest``."""
    if kind not in EXTENSIONS:
        raise DownloadError(f"unknown result kind {kind!r}", job_id=job_id, kind=kind)
    root = dest.resolve()
    path = (root / job_dir_name(job_id) / f"{kind}.{EXTENSIONS[kind]}").resolve()
    if path.parent.parent != root:
        raise DownloadError(f"refusing a path outside {root}", job_id=job_id, kind=kind)
    return path


def prepare_job_dir(directory: Path, job_id: str) -> None:
    """Create a job's directory; a shortened one gets its ``JOB_ID`` file (written atomically).

    A new directory's entry in ``dest`` is made durable by the downloader, once per batch of
    finished files, before it records them as done.
    """
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / "JOB_ID"
    if "~" in directory.name and not marker.exists():
        # Two files of one job may be fetched at once: each writes its own temporary name.
        tmp = directory / f".JOB_ID.{uuid.uuid4().hex}.tmp"
        tmp.write_text(job_id, encoding="utf-8", errors="surrogatepass")
        tmp.replace(marker)


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries durable (a rename or a new entry in it), on POSIX."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
