"""create messages and sequence

The messages table is keyed by ``seq`` (commit-ordered, see db.py) with a
unique ``id``; ``message_sequence`` holds the single counter row, seeded here.

Revision ID: 73c99d0a3b93
Revises:
Create Date: 2026-11-29 07:50:09.057247

"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# revision identifiers, used by Alembic.
revision = "73c99d0a3b93"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "message_sequence",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    op.create_table(
        "messages",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb").with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.Column(
            "persisted_at",
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb").with_variant(mysql.DATETIME(fsp=6), "mysql"),
            nullable=False,
        ),
        sa.Column(
            "payload",
            sa.Text().with_variant(mysql.MEDIUMTEXT(), "mariadb").with_variant(mysql.MEDIUMTEXT(), "mysql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id", name="uq_messages_id"),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    counter = sa.table(
        "message_sequence",
        sa.column("id", sa.Integer),
        sa.column("last_seq", sa.BigInteger),
    )
    op.bulk_insert(counter, [{"id": 1, "last_seq": 0}])


def downgrade():
    op.drop_table("messages")
    op.drop_table("message_sequence")
