"""``downloads verify`` over more rows than one page: every row is checked exactly once."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import update

from jobtracker import downloads as downloads_module
from jobtracker.schema import downloads
from jobtracker.tracker import Tracker


def completed(job_id: str) -> dict[str, object]:
    return {
        "job_id": job_id,
        "request": {"models": {"face": {}}, "urls": ["https://inputs.example.com/a.mp4"]},
        "state": {
            "status": "COMPLETED",
            "created_timestamp_ms": 1_700_000_000_000,
            "started_timestamp_ms": 1_700_000_001_000,
            "ended_timestamp_ms": 1_700_000_005_000,
        },
    }


def test_verify_pages_through_every_done_file(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloads_module, "_VERIFY_PAGE", 3)
    with Tracker(db_url) as tracker:
        tracker.upgrade()
        ids = [f"job-{n:02d}" for n in range(5)]
        assert tracker.ingest([completed(i) for i in ids]).inserted == 5
        with tracker.write() as conn:
            for job_id in ids:
                for kind in ("predictions", "artifacts"):
                    path = tmp_path / f"{job_id}-{kind}"
                    path.write_bytes(f"{job_id} {kind}".encode())
                    conn.execute(
                        update(downloads)
                        .where(downloads.c.job_id == job_id, downloads.c.kind == kind)
                        .values(
                            state="done",
                            local_path=str(path),
                            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                        )
                    )
        (tmp_path / "job-01-artifacts").unlink()
        (tmp_path / "job-04-predictions").write_bytes(b"changed")

        result = tracker.verify_downloads()
        assert (result.checked, result.ok, result.missing, result.changed) == (10, 8, 1, 1)
        pending = {(r.job_id, r.kind): r.last_error for r in tracker.outstanding_downloads()}
        assert set(pending) == {("job-01", "artifacts"), ("job-04", "predictions")}
        assert "missing" in (pending[("job-01", "artifacts")] or "")
        assert "changed" in (pending[("job-04", "predictions")] or "")

        again = tracker.verify_downloads()
        assert (again.checked, again.ok, again.missing, again.changed) == (8, 8, 0, 0)
