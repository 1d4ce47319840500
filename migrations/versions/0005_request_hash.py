"""jobs.request_hash: a hash of the job's request, to skip rewriting unchanged configs/inputs.

A job's request never changes after submission, but its status does: with the hash stored, a
status change updates the job row and its configs' run time instead of deleting and inserting
every config and input row again. Existing rows get NULL and are rewritten once, on their next
change.

Revision ID: 0005_request_hash
Revises: 0004_created_run_time_index
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_request_hash"
down_revision: str | None = "0004_created_run_time_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("request_hash", sa.String(64), nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN, never a batch rebuild (see 0002_poller.downgrade).
    op.execute("ALTER TABLE jobs DROP COLUMN request_hash")
