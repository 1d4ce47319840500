"""Download claims: which downloader is fetching a file, and until when.

Revision ID: 0003_download_claims
Revises: 0002_poller
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_download_claims"
down_revision: str | None = "0002_poller"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("downloads", sa.Column("claimed_by", sa.Text(), nullable=True))
    op.add_column(
        "downloads", sa.Column("claim_expires_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    # Plain DROP COLUMN, never a batch rebuild (see 0002_poller.downgrade).
    for column in ("claim_expires_at", "claimed_by"):
        op.execute(f"ALTER TABLE downloads DROP COLUMN {column}")
