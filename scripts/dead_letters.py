"""List and replay messages the database kept rejecting (the dead-letter list).

    python scripts/dead_letters.py list [--limit 20] [--json]
    python scripts/dead_letters.py replay (--all | --id ID [--id ID ...])
    python scripts/dead_letters.py count

Reads ``REDIS_URL``, ``DEAD_LETTER_KEY`` and ``PERSIST_QUEUE`` like the
services do: from the environment, else from the stack ``scripts/run.sh`` is
running from this checkout, else the defaults. Exits 2 with one line when
that Redis does not answer. Replaying puts a message back on the persistence queue (and
removes it from the list atomically); fix the cause first, or it will come
back. Storage is idempotent, so replaying a message that was stored meanwhile
does no harm.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import functools

import redis

from relay.broker.connection import connect
from relay.broker.contract import make_celery, send_records
from relay.broker.dead_letters import DeadLetters
from relay.broker.producer import Producer
from relay.settings import load_settings, setting_origin


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=f"Redis: {settings.redis_url} ({setting_origin('REDIS_URL')}); list {settings.dead_letter_key!r}, "
        f"replayed onto queue {settings.persist_queue!r}.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("list", help="show the oldest dead letters")
    show.add_argument("--limit", type=int, default=20, help="most entries shown (default 20)")
    show.add_argument("--json", action="store_true", help="one JSON entry per line")
    sub.add_parser("count", help="print how many there are")
    replay = sub.add_parser("replay", help="put dead letters back on the persistence queue")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true")
    which.add_argument("--id", action="append", dest="ids", help="message id (repeatable)")
    args = parser.parse_args(argv)

    client = connect(settings.redis_url, timeout=5.0)
    celery = make_celery(settings, timeout=5.0)
    send = functools.partial(send_records, celery, settings.persist_queue, max_bytes=settings.persist_message_max_bytes)
    # A replay is accepted again as the ingestion API accepts a message: new offset and position, live frame.
    producer = Producer(client, settings.persist_queue, settings.live_stream_key, settings.live_window, 0, send=send)
    dead_letters = DeadLetters(client, settings.dead_letter_key, producer.write)
    try:
        return run(args, dead_letters, settings.dead_letter_key, settings.persist_queue)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        print(f"error: Redis at {settings.redis_url} does not answer ({exc}); {setting_origin('REDIS_URL')}: "
              "start the stack (scripts/run.sh) or set REDIS_URL", file=sys.stderr)  # fmt: skip
        return 2


def run(args: argparse.Namespace, dead_letters: DeadLetters, key: str, queue: str) -> int:
    """Carry out the command ``args`` names."""
    if args.command == "count":
        print(dead_letters.count())
    elif args.command == "list":
        entries = dead_letters.entries(args.limit)
        for entry in entries:
            if args.json:
                print(json.dumps(entry, ensure_ascii=False))
            else:
                record = entry["record"]
                print(f"{record['id']}  failed {entry['failed_at']}  {entry['error']}")
                print(f"    payload: {record['payload'][:200]}")
        if not args.json:
            print(f"{dead_letters.count()} dead letter(s) in {key!r}")
    else:
        replayed = dead_letters.replay(None if args.all else set(args.ids))
        print(f"replayed {replayed} message(s) onto {queue!r}")
        if args.ids and replayed < len(set(args.ids)):
            print("some ids were not in the dead-letter list", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
