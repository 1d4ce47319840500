"""Initial schema: jobs, configs, inputs, status history, downloads, reporting views.

Revision ID: 0001_initial
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _views(dialect: str) -> dict[str, str]:
    """View SQL frozen at this revision; only the day and string aggregation differ by dialect."""
    if dialect == "postgresql":
        models = (
            "(SELECT string_agg(c.model, ',' ORDER BY c.model) "
            "FROM job_configs c WHERE c.job_id = j.job_id)"
        )
        day = "(j.created_at AT TIME ZONE 'UTC')::date"
    else:
        models = (
            "(SELECT group_concat(model, ',') FROM "
            "(SELECT c.model AS model FROM job_configs c "
            "WHERE c.job_id = j.job_id ORDER BY c.model))"
        )
        day = "date(j.created_at)"
    return {
        "job_run_times": f"""
            SELECT j.job_id, j.status, {models} AS models,
                   j.created_at, j.started_at, j.ended_at,
                   j.run_time_s, j.queue_time_s, j.error_message
            FROM jobs j""",
        "model_run_times": """
            SELECT c.model, j.job_id, j.status, j.created_at, j.started_at, j.ended_at,
                   j.run_time_s, j.queue_time_s
            FROM job_configs c JOIN jobs j ON j.job_id = c.job_id""",
        "outstanding_downloads": """
            SELECT d.job_id, d.kind, d.state, d.attempts, d.last_error, d.url_expires_at,
                   d.created_at, j.status AS job_status, j.ended_at AS job_ended_at
            FROM downloads d JOIN jobs j ON j.job_id = d.job_id
            WHERE d.state <> 'done'""",
        "daily_summary": f"""
            SELECT {day} AS day,
                   COUNT(*) AS jobs,
                   SUM(CASE WHEN j.status = 'COMPLETED' THEN 1 ELSE 0 END) AS completed,
                   SUM(CASE WHEN j.status = 'FAILED' THEN 1 ELSE 0 END) AS failed,
                   SUM(CASE WHEN j.status IN ('QUEUED', 'IN_PROGRESS') THEN 1 ELSE 0 END)
                       AS unfinished,
                   AVG(j.run_time_s) AS mean_run_time_s,
                   MAX(j.run_time_s) AS max_run_time_s,
                   SUM(j.num_predictions) AS predictions,
                   SUM(j.num_errors) AS errors
            FROM jobs j
            WHERE j.created_at IS NOT NULL
            GROUP BY {day}""",
    }


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("job_type", sa.Text(), nullable=True),
        sa.Column("response_shape", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=True),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("run_time_s", sa.Float(), nullable=True),
        sa.Column("queue_time_s", sa.Float(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("num_predictions", sa.Integer(), nullable=True),
        sa.Column("num_errors", sa.Integer(), nullable=True),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("notify", sa.Boolean(), nullable=True),
        sa.Column("raw_payload", JSON, nullable=False),
        sa.Column("payload_hash", sa.String(64), nullable=False),
        sa.Column("parser_version", sa.Integer(), nullable=False),
        sa.Column("first_seen_at", TS, nullable=False),
        sa.Column("last_changed_at", TS, nullable=False),
        sa.Column("terminal_seen_at", TS, nullable=True),
        sa.Column("last_polled_at", TS, nullable=True),
        sa.CheckConstraint(
            "status IN ('QUEUED', 'IN_PROGRESS', 'COMPLETED', 'FAILED')", name="ck_jobs_status"
        ),
        sa.CheckConstraint(
            "response_shape IN ('current', 'legacy')", name="ck_jobs_response_shape"
        ),
        sa.PrimaryKeyConstraint("job_id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.create_index("ix_jobs_status_created_at", "jobs", ["status", "created_at"])
    op.create_index("ix_jobs_status_run_time_s", "jobs", ["status", "run_time_s"])

    op.create_table(
        "job_configs",
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("run_time_s", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.job_id"], name="fk_job_configs_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "model", name="pk_job_configs"),
    )
    op.create_index("ix_job_configs_model_run_time_s", "job_configs", ["model", "run_time_s"])

    op.create_table(
        "job_inputs",
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("detail", JSON, nullable=True),
        sa.CheckConstraint("kind IN ('url', 'file', 'text')", name="ck_job_inputs_kind"),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.job_id"], name="fk_job_inputs_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "kind", "position", name="pk_job_inputs"),
    )

    op.create_table(
        "job_status_history",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("provider_at", TS, nullable=True),
        sa.Column("observed_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.job_id"],
            name="fk_job_status_history_job_id_jobs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_job_status_history"),
    )
    op.create_index("ix_job_status_history_job_id_id", "job_status_history", ["job_id", "id"])

    op.create_table(
        "downloads",
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("source_url", sa.Text(), nullable=True),
        sa.Column("url_expires_at", TS, nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("local_path", sa.Text(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("completed_at", TS, nullable=True),
        sa.CheckConstraint("state IN ('pending', 'done', 'failed')", name="ck_downloads_state"),
        sa.CheckConstraint(
            "kind IN ('predictions', 'artifacts', 'errors')", name="ck_downloads_kind"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.job_id"], name="fk_downloads_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "kind", name="pk_downloads"),
    )
    op.create_index(
        "ix_downloads_outstanding",
        "downloads",
        ["created_at", "job_id", "kind"],
        sqlite_where=sa.text("state <> 'done'"),
        postgresql_where=sa.text("state <> 'done'"),
    )
    op.create_index(
        "ix_downloads_expiring",
        "downloads",
        ["url_expires_at"],
        sqlite_where=sa.text("state <> 'done' AND url_expires_at IS NOT NULL"),
        postgresql_where=sa.text("state <> 'done' AND url_expires_at IS NOT NULL"),
    )

    for name, sql in _views(op.get_bind().dialect.name).items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def downgrade() -> None:
    for name in _views(op.get_bind().dialect.name):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_table("downloads")
    op.drop_table("job_status_history")
    op.drop_table("job_inputs")
    op.drop_table("job_configs")
    op.drop_table("jobs")
