"""channels

Every message gets a ``channel`` (existing rows: ``dummy``, the seed's
``POST /dummy``) with an index on ``(channel, seq)`` for the per-channel
listing, and the ``channels`` table holds each channel's count and newest
message, filled here from the rows already stored.

Revision ID: 5b1e0c2f9a41
Revises: 73c99d0a3b93
Create Date: 2026-11-30 04:00:00.000000

"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# revision identifiers, used by Alembic.
revision = "5b1e0c2f9a41"
down_revision = "73c99d0a3b93"
branch_labels = None
depends_on = None

_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb").with_variant(mysql.DATETIME(fsp=6), "mysql")


def upgrade():
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("channel", sa.String(length=64), nullable=False, server_default="dummy"))
        batch.create_index("ix_messages_channel_seq", ["channel", "seq"])
    op.create_table(
        "channels",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_message_at", _DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("name"),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    # The rows stored so far are all the channel "dummy": count them and find the newest.
    op.execute(
        "INSERT INTO channels (name, messages, last_seq, last_message_at) "
        "SELECT 'dummy', COUNT(*), MAX(seq), (SELECT received_at FROM messages ORDER BY seq DESC LIMIT 1) "
        "FROM messages HAVING COUNT(*) > 0"
    )


def downgrade():
    op.drop_table("channels")
    with op.batch_alter_table("messages") as batch:
        batch.drop_index("ix_messages_channel_seq")
        batch.drop_column("channel")
