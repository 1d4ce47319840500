"""Poller bookkeeping: per-job schedule, tracked ids, run records, leases, state.

Revision ID: 0002_poller
Revises: 0001_initial
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_poller"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Plain ADD COLUMN: both backends do it in place (no table rebuild under the views).
    op.add_column("jobs", sa.Column("next_poll_at", TS, nullable=True))
    op.add_column(
        "jobs",
        sa.Column("poll_failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column("jobs", sa.Column("last_poll_error", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("not_found_at", TS, nullable=True))

    op.create_table(
        "tracked_jobs",
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("added_at", TS, nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("not_found_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("job_id", name="pk_tracked_jobs"),
    )
    op.create_table(
        "poll_runs",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("command", sa.String(16), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("requests", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("jobs_seen", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("jobs_changed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("jobs_failed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_poll_runs"),
    )
    op.create_index("ix_poll_runs_command_started_at", "poll_runs", ["command", "started_at"])
    op.create_table(
        "leases",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("acquired_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )
    op.create_table(
        "tracker_state",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_tracker_state"),
    )


def downgrade() -> None:
    op.drop_table("tracker_state")
    op.drop_table("leases")
    op.drop_index("ix_poll_runs_command_started_at", table_name="poll_runs")
    op.drop_table("poll_runs")
    op.drop_table("tracked_jobs")
    # Plain DROP COLUMN (SQLite >= 3.35 and PostgreSQL): a batch-mode table rebuild would drop
    # the old `jobs` table, and with foreign keys on that cascades into every child table.
    for column in ("not_found_at", "last_poll_error", "poll_failures", "next_poll_at"):
        op.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
