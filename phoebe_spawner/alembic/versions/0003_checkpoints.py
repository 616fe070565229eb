"""Bundle checkpoints: checkpoints.

Revision ID: 0003
Revises: 0002
Create Date: 2025-07-01 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the ``checkpoints`` table with its indexes (a new table only).

    ``session_id`` has no foreign key on purpose: a checkpoint outlives its session row.
    """
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("project_name", sa.String(length=255), nullable=True),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkpoints")),
    )
    op.create_index(op.f("ix_checkpoints_session_id"), "checkpoints", ["session_id"], unique=False)
    op.create_index(
        "ix_checkpoints_user_id_created_at",
        "checkpoints",
        ["user_id", "created_at"],
        unique=False,
    )


def downgrade() -> None:
    """Drop everything :func:`upgrade` created (manual recovery only).

    Loses the checkpoint metadata; the bundle files stay on disk, unreferenced.
    """
    op.drop_index("ix_checkpoints_user_id_created_at", table_name="checkpoints")
    op.drop_index(op.f("ix_checkpoints_session_id"), table_name="checkpoints")
    op.drop_table("checkpoints")
