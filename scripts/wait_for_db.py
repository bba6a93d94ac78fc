"""Wait until the database accepts connections, then optionally run a command.

The compose stack's ``migrate`` service runs it before the migrations, as
microblog's ``boot.sh`` and the FastAPI template's pre-start script do::

    python scripts/wait_for_db.py --timeout 120 -- flask --app db db upgrade

It retries ``SELECT 1`` with SQLAlchemy until it works (exit 0, or ``exec``
the command after ``--``) or until ``--timeout`` seconds have passed (exit 1).
Each attempt is bounded too, so a server that accepts TCP but never answers
cannot hang it. Reads ``SQLALCHEMY_DATABASE_URI`` through ``relay/settings.py``
unless ``--url`` is given.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.settings import load_settings


def _connect_args(url: sa.URL, timeout: float) -> dict[str, float]:
    """Per-attempt time limits for the drivers we use (SQLite never waits on a network)."""
    seconds = max(1, round(timeout))
    if url.get_backend_name() in ("mysql", "mariadb"):
        return {"connect_timeout": seconds, "read_timeout": seconds, "write_timeout": seconds}
    return {}


def database_ready(url: str, timeout: float) -> str | None:
    """Try one ``SELECT 1``; return None on success or the error text."""
    parsed = sa.make_url(url)
    engine = sa.create_engine(parsed, connect_args=_connect_args(parsed, timeout), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        return str(getattr(exc, "orig", None) or exc).splitlines()[0]
    finally:
        engine.dispose()
    return None


def wait_for_database(url: str, timeout: float, interval: float = 1.0) -> bool:
    """Retry until the database answers or ``timeout`` seconds pass; tell which."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        error = database_ready(url, min(5.0, max(remaining, 0.5)))
        if error is None:
            print(f"database ready after {attempt} attempt(s)", flush=True)
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            print(f"database not ready after {timeout:g}s: {error}", file=sys.stderr, flush=True)
            return False
        print(f"database not ready ({error}); retrying", file=sys.stderr, flush=True)
        time.sleep(min(interval, remaining))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (default: SQLALCHEMY_DATABASE_URI via relay/settings.py)")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds (default 60)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between attempts (default 1)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="command to exec once ready (after --)")
    args = parser.parse_args(argv)
    url = args.url or load_settings().sqlalchemy_database_uri
    if not wait_for_database(url, args.timeout, args.interval):
        return 1
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if command:
        os.execvp(command[0], command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
