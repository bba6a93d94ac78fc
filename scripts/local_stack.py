"""Claim this checkout for one ``scripts/run.sh`` stack, and record its settings for the other tools.

    exec 9<>var/local-stack.env && python scripts/local_stack.py 9

run.sh calls it before it changes anything. It takes an exclusive ``flock``
on the already opened file descriptor (shared with run.sh, which then
``exec``s honcho, so the lock lasts exactly as long as the stack), checks
that every port the stack will listen on is free, and only then writes the
stack's settings into the file as ``NAME=value`` lines (shell-quoted:
``set -a; . var/local-stack.env`` works too). ``relay.settings.load_settings`` reads
them for any variable the environment does not set, while the lock is held.
Exits 1 with one line when another run.sh runs from this checkout or a port
is taken; nothing is touched then.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import socket
import sys
import time

# What a command-line tool needs to reach the stack: every URL and port it serves; no secrets
# (API_TOKENS). The worker's metrics are recorded as a URL, not as WORKER_METRICS_PORT: that setting
# would make a worker started by hand beside the stack try to listen on the same port.
RECORDED = (
    "REDIS_URL", "SQLALCHEMY_DATABASE_URI", "INGESTION_API_PORT", "LIST_API_PORT", "WS_PORT",
    "INGESTION_API_URL", "LIST_API_URL", "WS_URL", "WORKER_METRICS_URL", "PERSIST_QUEUE", "DEAD_LETTER_KEY",
    "LIVE_STREAM_KEY",
)  # fmt: skip
PORTS = ("INGESTION_API_PORT", "LIST_API_PORT", "WS_PORT", "WORKER_METRICS_PORT", "EMBEDDED_REDIS_PORT")


class Refused(Exception):
    """The stack must not start: the reason is the message."""


def lock(fd: int) -> None:
    """Take the exclusive lock, allowing a moment for a reader's brief shared lock to go."""
    for _ in range(20):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.05)
    recorded = dict(line.partition("=")[::2] for line in os.pread(fd, 65536, 0).decode().splitlines())
    pid = recorded.get("LOCAL_STACK_PID", "?")
    raise Refused(f"scripts/run.sh is already running from this checkout (pid {pid}): stop it first (Ctrl-C)")


def port_in_use(host: str, port: int) -> bool:
    """Say whether something listens on ``host:port`` (answers a connection, or holds the address)."""
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # the wildcard is reached locally
    with socket.socket() as client:
        client.settimeout(0.5)
        if client.connect_ex((probe_host, port)) == 0:
            return True
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
        try:
            server.bind((host, port))
        except OSError:
            return True
    return False


def check_ports(environ: dict[str, str]) -> None:
    """Refuse when a port the stack will listen on is taken (a stack from another checkout, say)."""
    host = environ.get("BIND_HOST", "127.0.0.1")
    for name in PORTS:
        port = int(environ.get(name) or 0)
        if port and port_in_use("127.0.0.1" if name == "EMBEDDED_REDIS_PORT" else host, port):
            raise Refused(f"port {port} ({name}) is in use: another stack is running; stop it or set {name}")


def record(fd: int, environ: dict[str, str], pid: int) -> None:
    """Replace the file's content with the stack's settings."""
    lines = ["# Written by scripts/run.sh; valid only while it runs (it holds a lock on this file).",
             f"LOCAL_STACK_PID={pid}"]  # fmt: skip
    lines += [f"{name}={shlex.quote(environ[name])}" for name in RECORDED if environ.get(name)]
    os.ftruncate(fd, 0)
    os.pwrite(fd, ("\n".join(lines) + "\n").encode(), 0)


def main(argv: list[str]) -> int:
    fd = int(argv[0])
    try:
        lock(fd)
        check_ports(dict(os.environ))
    except Refused as exc:
        print(f"run.sh: {exc}", file=sys.stderr)
        return 1
    record(fd, dict(os.environ), os.getppid())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
