"""Measure how many idle or stalled connections an API tolerates before its /healthz slows down.

    python scripts/probe_connections.py http://127.0.0.1:5001 [--modes idle,head,body]
                                        [--max 1024] [--hold 3] [--limit 1.0] [--json out.json]

For each mode, and each count in 1, 2, 3, 4, 6, 8, 12, 16, 24, ... up to ``--max``,
it opens that many connections, holds them ``--hold`` seconds while asking
``GET /healthz`` on a fresh connection every 0.2 s, then closes them and waits
until ``/healthz`` is quick again. A mode stops at the first count where a
``/healthz`` took longer than ``--limit`` seconds; the tolerance printed is the
largest count before it. Modes:

* ``idle``: connect, send nothing.
* ``head``: send the start of a request head (no blank line), then stall.
* ``body``: send a whole ``POST /dummy`` head announcing a 100-byte body and
  one byte of it, then stall.
* ``unclosed``: send a whole ``GET /healthz`` with ``Connection: close``,
  then neither read the answer nor close the socket.

Standard library only; reads nothing from the environment. Point it only at
a server you run: it is a (small) denial-of-service probe.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import socket
import sys
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

MODES = ("idle", "head", "body", "unclosed")
STALLED_HEAD = b"GET /healthz HTTP/1.1\r\nHost: probe\r\nUser-Agent: probe"
STALLED_BODY = b"POST /dummy HTTP/1.1\r\nHost: probe\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
UNCLOSED = b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
GREETINGS = {"idle": b"", "head": STALLED_HEAD, "body": STALLED_BODY, "unclosed": UNCLOSED}


def counts_up_to(maximum: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, 24, ... (each power of two and the point halfway to the next), up to ``maximum``."""
    counts, power = [1], 2
    while power <= maximum:
        counts += [c for c in (power, power + power // 2) if c <= maximum and c not in counts]
        power *= 2
    return counts


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def healthz_seconds(url: str, cap: float) -> float:
    """Time one ``GET /healthz`` on a fresh connection to its full answer; ``cap`` (or more) if it takes that long."""
    started = time.monotonic()
    try:
        with socket.create_connection(address(url), timeout=cap) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    except OSError:
        return max(cap, time.monotonic() - started)
    if not answer.startswith(b"HTTP/1.1 200"):
        return max(cap, time.monotonic() - started)
    return time.monotonic() - started


@contextlib.contextmanager
def hostile_connections(url: str, mode: str, count: int) -> Iterator[list[socket.socket]]:
    """Open ``count`` connections that behave as ``mode`` says; close them all on exit."""
    greeting = GREETINGS[mode]
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(address(url), timeout=5)
            if greeting:
                sock.sendall(greeting)
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def worst_healthz(url: str, hold: float, cap: float) -> float:
    """Ask ``/healthz`` every 0.2 s for ``hold`` seconds; return the slowest answer."""
    worst, deadline = 0.0, time.monotonic() + hold
    while time.monotonic() < deadline:
        worst = max(worst, healthz_seconds(url, cap))
        time.sleep(0.2)
    return worst


def wait_quick(url: str, limit: float, timeout: float = 90.0) -> None:
    """Wait until three ``/healthz`` in a row answer within ``limit`` (the server has recovered)."""
    deadline, quick = time.monotonic() + timeout, 0
    while quick < 3:
        if time.monotonic() > deadline:
            raise SystemExit(f"error: {url}/healthz did not recover within {timeout:.0f} s")
        quick = quick + 1 if healthz_seconds(url, limit * 3) <= limit else 0
        time.sleep(0.1)


def tolerance(url: str, mode: str, maximum: int, hold: float, limit: float) -> dict:
    """Escalate ``mode`` connections until ``/healthz`` passes ``limit``; return the table and the tolerance."""
    rows, tolerated, failed_at = [], 0, None
    print(f"\n{mode} connections to {url} (held {hold:g} s each; limit {limit:g} s)")
    print(f"  {'count':>6}  worst /healthz")
    for count in counts_up_to(maximum):
        wait_quick(url, limit)
        with hostile_connections(url, mode, count):
            worst = worst_healthz(url, hold, cap=limit * 3)
        rows.append({"count": count, "worst_seconds": round(worst, 3)})
        print(f"  {count:>6}  {'>' if worst >= limit * 3 else ' '}{worst:.3f} s", flush=True)
        if worst > limit:
            failed_at = count
            break
        tolerated = count
    verdict = f"slows past {limit:g} s at {failed_at}" if failed_at else f"never slowed past {limit:g} s"
    print(f"{mode}: tolerates {tolerated} ({verdict})")
    return {"mode": mode, "tolerated": tolerated, "failed_at": failed_at, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the API's base URL, e.g. http://127.0.0.1:5001")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated: {', '.join(MODES)} (default: all)")
    parser.add_argument("--max", type=int, default=1024, help="largest count of connections to try (default 1024)")
    parser.add_argument("--hold", type=float, default=3.0, help="seconds to hold each count open (default 3)")
    parser.add_argument("--limit", type=float, default=1.0, help="slowest acceptable /healthz, seconds (default 1)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.max + 64 if hard == resource.RLIM_INFINITY else min(args.max + 64, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    url = args.url.rstrip("/")
    if healthz_seconds(url, 5) >= 5:
        print(f"error: {url}/healthz does not answer 200", file=sys.stderr)
        return 2
    results = [tolerance(url, mode, args.max, args.hold, args.limit) for mode in modes]
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"url": url, "limit_seconds": args.limit, "hold_seconds": args.hold, "modes": results}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
