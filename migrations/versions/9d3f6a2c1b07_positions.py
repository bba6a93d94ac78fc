"""positions

Positions are given at acceptance now (relay/broker/positions.py), so:

* every message gets its ``channel_offset``: existing rows are numbered
  1, 2, 3... within their channel in their current ``seq`` order (which stays
  their position);
* ``channels`` keeps each channel's highest offset (``last_offset``), and
  ``channel_deltas`` takes what each save adds, folded into ``channels`` by
  the workers;
* the ``message_sequence`` counter row, which every save locked, goes.

Upgrade order (docs/operations.md): stop the workers, migrate, start the new
workers (they seed the Redis counters from these numbers), then the APIs.

Revision ID: 9d3f6a2c1b07
Revises: 5b1e0c2f9a41
Create Date: 2026-12-07 23:50:00.000000

"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# revision identifiers, used by Alembic.
revision = "9d3f6a2c1b07"
down_revision = "5b1e0c2f9a41"
branch_labels = None
depends_on = None

_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb").with_variant(mysql.DATETIME(fsp=6), "mysql")


def upgrade():
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.add_column("messages", sa.Column("channel_offset", sa.BigInteger(), nullable=True))
    if sqlite:
        # Counted through the (channel, seq) index: the rows of its channel up to this one.
        op.execute(
            "UPDATE messages SET channel_offset = (SELECT COUNT(*) FROM messages AS earlier "
            "WHERE earlier.channel = messages.channel AND earlier.seq <= messages.seq)"
        )
    else:
        op.execute(
            "UPDATE messages JOIN (SELECT seq, ROW_NUMBER() OVER (PARTITION BY channel ORDER BY seq) AS n "
            "FROM messages) AS numbered ON numbered.seq = messages.seq SET messages.channel_offset = numbered.n"
        )
    with op.batch_alter_table("messages") as batch:
        batch.alter_column("channel_offset", existing_type=sa.BigInteger(), nullable=False)
    with op.batch_alter_table("channels") as batch:
        batch.add_column(sa.Column("last_offset", sa.BigInteger(), nullable=False, server_default="0"))
    op.execute(
        "UPDATE channels SET last_offset = "
        "(SELECT COALESCE(MAX(channel_offset), 0) FROM messages WHERE messages.channel = channels.name)"
    )
    op.create_table(
        "channel_deltas",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_offset", sa.BigInteger(), nullable=False),
        sa.Column("last_message_at", _DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    op.drop_table("message_sequence")


def downgrade():
    op.create_table(
        "message_sequence",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    # The counter continues above every position given, so the release before never gives one twice.
    op.execute(
        "INSERT INTO message_sequence (id, last_seq) SELECT 1, COALESCE(MAX(last_seq), 0) FROM "
        "(SELECT MAX(seq) AS last_seq FROM messages UNION ALL SELECT MAX(last_seq) FROM channels "
        "UNION ALL SELECT MAX(last_seq) FROM channel_deltas) AS highest"
    )
    # Deltas not folded yet would be lost with their table: fold them first (count, highest position, newest time).
    greatest = "MAX" if op.get_bind().dialect.name == "sqlite" else "GREATEST"
    op.execute(
        "UPDATE channels SET "  # noqa: S608 (the one word interpolated is MAX or GREATEST, chosen here)
        "messages = messages + (SELECT COALESCE(SUM(d.messages), 0) FROM channel_deltas AS d "
        "WHERE d.channel = channels.name), "
        f"last_message_at = {greatest}(last_message_at, COALESCE((SELECT MAX(d.last_message_at) "
        "FROM channel_deltas AS d WHERE d.channel = channels.name), last_message_at)), "
        f"last_seq = {greatest}(last_seq, COALESCE((SELECT MAX(d.last_seq) "
        "FROM channel_deltas AS d WHERE d.channel = channels.name), last_seq))"
    )
    op.execute(
        "INSERT INTO channels (name, messages, last_seq, last_offset, last_message_at) "
        "SELECT channel, SUM(messages), MAX(last_seq), MAX(last_offset), MAX(last_message_at) FROM channel_deltas "
        "WHERE channel NOT IN (SELECT name FROM channels) GROUP BY channel"
    )
    op.drop_table("channel_deltas")
    with op.batch_alter_table("channels") as batch:
        batch.drop_column("last_offset")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("channel_offset")
