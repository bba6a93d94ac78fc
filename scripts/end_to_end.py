"""Post N messages to a running stack and check each one arrives live and in the list API.

    python scripts/end_to_end.py [--count 100] [--ingest-url URL] [--list-url URL] [--ws-url URL]
                                 [--timeout 30] [--delay 0]

A websocket client listens while the messages are posted (``--ws-url ''``
skips it). Exits non-zero (and says which ids) if any accepted message is
missing from the websocket or the listing, or listed twice, after
``--timeout`` seconds. The URLs default to ``INGESTION_API_URL``,
``LIST_API_URL`` and ``WS_URL`` as the services read them: from the
environment, else from the stack ``scripts/run.sh`` is running from this
checkout (``--help`` shows them). Exits 2 with one line when that stack does
not answer. ``--delay 0.2`` paces the posts so you can watch them arrive on
the live page.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.settings import load_settings, setting_origin


class StackDown(Exception):
    """A service of the stack does not answer: the message says which and where."""


def request(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """Send one JSON request and return (status, decoded body)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def listed_ids(list_url: str, wanted: set[str]) -> list[str]:
    """Return the ids among ``wanted`` found by walking the listing newest-first.

    Ids are UUIDv7 (time-ordered), so the walk stops once it reaches messages
    received before the oldest wanted one: older history is never read.
    """
    found: list[str] = []
    oldest = min(wanted)
    cursor = None
    while True:
        query = "order=desc&limit=1000" + (f"&cursor={cursor}" if cursor else "")
        _, page = request("GET", f"{list_url}/messages?{query}")
        found += [m["id"] for m in page["data"] if m["id"] in wanted]
        cursor = page["next_cursor"]
        reached_older = any(m["id"] < oldest for m in page["data"])
        if not page["has_more"] or reached_older or len(set(found)) >= len(wanted):
            return found


class LiveListener(threading.Thread):
    """Collect the ids of every message frame the websocket server sends."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.ids: list[str] = []
        self.ready = threading.Event()
        self.done = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.listen()
        except Exception as exc:  # reported by main() in one line, not as a thread traceback
            self.error = exc
            self.ready.set()

    def listen(self) -> None:
        from websockets.sync.client import connect

        with connect(self.url, open_timeout=5) as connection:
            while not self.done.is_set():
                try:
                    frame = json.loads(connection.recv(timeout=0.2))
                except TimeoutError:
                    continue
                if frame.get("type") == "ready":
                    self.ready.set()
                elif "id" in frame:
                    self.ids.append(frame["id"])


def check_up(name: str, url: str, origin: str) -> None:
    """Raise ``StackDown`` unless ``url`` answers at all (any HTTP status will do)."""
    try:
        request("GET", url)
    except ValueError:
        return  # an answer, if not in JSON
    except OSError as exc:  # urllib's URLError included
        raise StackDown(f"the {name} at {url} does not answer ({getattr(exc, 'reason', exc)}); {origin}") from None


def main() -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100, help="messages to post")
    parser.add_argument("--ingest-url", default=settings.ingestion_api_url, help=setting_origin("INGESTION_API_URL"))
    parser.add_argument("--list-url", default=settings.list_api_url, help=setting_origin("LIST_API_URL"))
    parser.add_argument("--ws-url", default=settings.ws_url, help=f"'' skips it; {setting_origin('WS_URL')}")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for persistence")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between posts")
    args = parser.parse_args()

    try:
        check_up("ingestion API", f"{args.ingest_url}/healthz", setting_origin("INGESTION_API_URL"))
        check_up("list API", f"{args.list_url}/healthz", setting_origin("LIST_API_URL"))
    except StackDown as exc:
        print(f"error: {exc}: start the stack (scripts/run.sh) or give the URLs (--help)", file=sys.stderr)
        return 2
    listener = LiveListener(args.ws_url) if args.ws_url else None
    if listener:
        listener.start()
        if not listener.ready.wait(10) or listener.error:
            reason = listener.error or "no ready frame within 10 s"
            print(f"error: the websocket server at {args.ws_url} does not answer ({reason})", file=sys.stderr)
            return 2
    started = time.monotonic()
    accepted: set[str] = set()
    for i in range(args.count):
        status, body = request("POST", f"{args.ingest_url}/dummy", {"seq": i, "text": f"end to end #{i}"})
        if status != 202:
            print(f"POST {i} answered {status}: {body}", file=sys.stderr)
            return 1
        accepted.add(body["id"])
        print(f"\rposted {i + 1}/{args.count}", end="", flush=True)
        time.sleep(args.delay)
    posted = time.monotonic() - started
    print(f"\nposted {len(accepted)} messages in {posted:.2f}s ({len(accepted) / posted:.0f}/s)")

    deadline = time.monotonic() + args.timeout
    found: list[str] = []
    while time.monotonic() < deadline:
        found = listed_ids(args.list_url, accepted)
        print(f"\rlisted {len(set(found))}/{len(accepted)}", end="", flush=True)
        if len(set(found)) == len(accepted):
            break
        time.sleep(0.2)
    print()
    missing = accepted - set(found)
    duplicated = {i for i in found if found.count(i) > 1}
    print(f"list API:  accepted={len(accepted)} listed={len(set(found))} missing={len(missing)} dup={len(duplicated)}")
    print(f"           all listed {time.monotonic() - started:.2f}s after the first POST")
    live_missing: set[str] = set()
    if listener:
        while time.monotonic() < deadline and not accepted <= set(listener.ids):
            time.sleep(0.05)
        live_missing = accepted - set(listener.ids)
        print(f"websocket: received={len(accepted & set(listener.ids))} missing={len(live_missing)}")
        listener.done.set()
    for message_id in sorted(missing)[:20]:
        print(f"missing from the list API: {message_id}", file=sys.stderr)
    for message_id in sorted(live_missing)[:20]:
        print(f"missing from the websocket: {message_id}", file=sys.stderr)
    return 1 if missing or duplicated or live_missing else 0


if __name__ == "__main__":
    sys.exit(main())
