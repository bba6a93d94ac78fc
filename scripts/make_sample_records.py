"""Load N sample messages straight into the database, fast, through the project's own write path.

    python scripts/make_sample_records.py [--count 10000] [--chunk 5000]
                                          [--database-url mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4]

Each chunk of ``--chunk`` records (made by ``relay.records.make_record``, as the
ingestion API makes them) is stored by ``storage.save_messages`` in one
transaction, the worker's path, exactly once, so the listing and cursors
behave as with real traffic. The rows are appended after whatever the table
already holds: positions and offsets continue from the highest stored
(``storage.position_floors``), as the accept script's counters would give
them. If ``REDIS_URL`` holds a stack's seeded position counters, they are
raised past the new rows afterwards, so that stack never gives a loaded
position again; load while its ingestion API is stopped, or one of its
messages could take a position loaded here meanwhile. The database
must be migrated first (``flask --app db db upgrade``). The default, 10,000
rows, is enough to page through; the pagination figures use a million
(``--count 1000000``).

``--database-url`` defaults to ``SQLALCHEMY_DATABASE_URI`` (read through
``relay/settings.py``, so the local stack's SQLite file when unset). Shows a progress
bar on stderr and prints rows/s at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_COUNT = 10_000  # enough to page through; ask for more with --count
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from tqdm import tqdm  # noqa: E402

from relay import storage  # noqa: E402
from relay.broker.connection import connect  # noqa: E402
from relay.broker.positions import Positions  # noqa: E402
from relay.records import DEFAULT_CHANNEL, make_record, utc_now  # noqa: E402
from relay.settings import load_settings  # noqa: E402

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")


def sample_records(start: int, count: int, first_position: int, first_offset: int) -> list[dict[str, object]]:
    """Return ``count`` records of the channel ``dummy`` with small, varied JSON payloads, numbered from ``start``.

    They take consecutive positions from ``first_position`` and offsets from ``first_offset``.
    """
    now = utc_now()
    records = []
    for k, n in enumerate(range(start, start + count)):
        record: dict[str, object] = make_record(
            {"sample": n, "user": f"user{n % 1000}", "text": f"sample message {n} {WORDS[n % len(WORDS)]}"}, now
        )
        record["position"], record["offset"] = first_position + k, first_offset + k
        records.append(record)
    return records


def schema_missing(url: str) -> bool:
    """Tell whether the migrated tables are absent from the database at ``url``."""
    engine = sa.create_engine(url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    return not {"messages", "channel_deltas"} <= tables


def load(url: str, count: int, chunk: int, progress: bool = True) -> dict[str, float]:
    """Store ``count`` sample records in transactions of ``chunk``; return counts and timings."""
    app = storage.create_app({"SQLALCHEMY_DATABASE_URI": url})
    stored = 0
    making = saving = 0.0
    started = time.perf_counter()
    with app.app_context(), tqdm(total=count, unit="rows", unit_scale=True, disable=not progress) as bar:
        try:
            last_position, last_offsets = storage.position_floors()
            last_offset = last_offsets.get(DEFAULT_CHANNEL, 0)
            for start in range(0, count, chunk):
                tick = time.perf_counter()
                records = sample_records(
                    start, min(chunk, count - start), last_position + 1 + start, last_offset + 1 + start
                )
                tock = time.perf_counter()
                stored += storage.save_messages(records)
                making += tock - tick
                saving += time.perf_counter() - tock
                bar.update(len(records))
            raise_counters(*storage.position_floors())
        finally:
            storage.db.engine.dispose()
    return {"rows": stored, "seconds": time.perf_counter() - started, "making": making, "saving": saving}


def raise_counters(last_position: int, last_offsets: dict[str, int]) -> None:
    """Raise the position counters of the stack on ``REDIS_URL`` past the loaded rows, if it has seeded ones."""
    settings = load_settings()
    try:
        positions = Positions(connect(settings.redis_url, timeout=1.0), settings.persist_queue)
        if positions.seeded():
            positions.seed(last_position, last_offsets)
    except redis.RedisError:
        pass  # no stack's Redis there: its workers seed from the database when they start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--count", type=int, default=DEFAULT_COUNT,
        help=f"records to load (default {DEFAULT_COUNT:,}; --count 1000000 for a million, as the pagination figures)",
    )  # fmt: skip
    parser.add_argument("--chunk", type=int, default=5000, help="records per transaction (default 5,000)")
    parser.add_argument(
        "--database-url", default=None, help="SQLAlchemy URL (default: SQLALCHEMY_DATABASE_URI, via relay/settings.py)"
    )
    parser.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    args = parser.parse_args(argv)
    if args.count < 0 or args.chunk < 1:
        parser.error("--count must be >= 0 and --chunk >= 1")
    url = args.database_url or load_settings().sqlalchemy_database_uri
    shown = sa.make_url(url).render_as_string(hide_password=True)
    try:
        if schema_missing(url):
            print(f"{shown} has no messages table: run `flask --app db db upgrade` first", file=sys.stderr)
            return 2
        result = load(url, args.count, args.chunk, progress=not args.no_progress)
    except sa.exc.SQLAlchemyError as exc:
        print(f"database error on {shown}: {exc}", file=sys.stderr)
        return 1
    rows, seconds = result["rows"], result["seconds"]
    print(
        f"stored {rows:,} rows into {shown} in {seconds:.2f}s: {rows / seconds if seconds else 0:,.0f} rows/s "
        f"(making records {result['making']:.2f}s, save_messages {result['saving']:.2f}s, chunk {args.chunk:,})"
    )
    if rows != args.count:
        print(f"expected {args.count:,} new rows, stored {rows:,}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
