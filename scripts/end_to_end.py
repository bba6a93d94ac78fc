"""Post N messages to a running stack and check each one arrives live and in the list API.

    python scripts/end_to_end.py [--count 100] [--channels 0] [--ingest-url URL] [--list-url URL]
                                 [--ws-url URL] [--timeout 30] [--delay 0]

A websocket client listens while the messages are posted (``--ws-url ''``
skips it). Exits non-zero (and says which ids) if any accepted message is
missing from the websocket or the listing, or listed twice, after
``--timeout`` seconds.

``--channels 3`` posts round-robin to three fresh channels (named for this
run) instead of ``POST /dummy``, with one websocket subscriber per channel
(``?channel=``) beside the all-channels one, and checks that each channel's
listing (``GET /channels/<c>/messages``) holds exactly that channel's
messages, that each subscriber got exactly its own and nothing else, and
that ``GET /channels`` counts each channel right. The URLs default to ``INGESTION_API_URL``,
``LIST_API_URL`` and ``WS_URL`` as the services read them: from the
environment, else from the stack ``scripts/run.sh`` is running from this
checkout (``--help`` shows them). Exits 2 with one line when that stack does
not answer. ``--delay 0.2`` paces the posts so you can watch them arrive on
the live page. On a terminal the counts update in place; piped or redirected,
each line is printed whole.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.settings import load_settings, setting_origin


class StackDown(Exception):
    """A service of the stack does not answer: the message says which and where."""


class Progress:
    """A count that moves: rewritten in place on a terminal, printed once, as a whole line, when piped."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.text = ""

    def update(self, text: str) -> None:
        self.text = text
        if self.live:
            print(f"\r{text}", end="", flush=True, file=self.stream)

    def done(self, *, keep: bool = True) -> None:
        """End the line; when piped, print its last state only if ``keep`` (a summary may follow instead)."""
        if self.live:
            print(file=self.stream)
        elif keep and self.text:
            print(self.text, file=self.stream)


def request(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """Send one JSON request and return (status, decoded body)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def channel_listing(list_url: str, channel: str) -> list[dict[str, Any]]:
    """Every message of ``channel``, oldest first, by following its listing's cursor to the end."""
    messages: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = "limit=1000" + (f"&cursor={cursor}" if cursor else "")
        _, page = request("GET", f"{list_url}/channels/{channel}/messages?{query}")
        messages += page["data"]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return messages


def channel_counts(list_url: str, names: set[str]) -> dict[str, int]:
    """``GET /channels``'s message count of each of ``names`` (walking every page)."""
    counts, cursor = {}, None
    while True:
        _, page = request("GET", f"{list_url}/channels?limit=1000" + (f"&cursor={cursor}" if cursor else ""))
        counts.update({c["name"]: c["messages"] for c in page["data"] if c["name"] in names})
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return counts


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
        self.channels: dict[str, str] = {}  # id -> the channel its frame named
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
                    self.channels[frame["id"]] = frame.get("channel", "")


def check_up(name: str, url: str, origin: str) -> None:
    """Raise ``StackDown`` unless ``url`` answers at all (any HTTP status will do)."""
    try:
        request("GET", url)
    except ValueError:
        return  # an answer, if not in JSON
    except OSError as exc:  # urllib's URLError included
        raise StackDown(f"the {name} at {url} does not answer ({getattr(exc, 'reason', exc)}); {origin}") from None


def subscriber_url(ws_url: str, channel: str | None) -> str:
    return f"{ws_url.rstrip('/')}/" + (f"?{urllib.parse.urlencode({'channel': channel})}" if channel else "")


def start_listeners(ws_url: str, channels: list[str]) -> dict[str | None, LiveListener]:
    """The all-channels subscriber (key None) and one per channel, each ready; raises StackDown if not."""
    listeners = {key: LiveListener(subscriber_url(ws_url, key)) for key in [None, *channels]}
    for listener in listeners.values():
        listener.start()
    for listener in listeners.values():
        if not listener.ready.wait(10) or listener.error:
            reason = listener.error or "no ready frame within 10 s"
            raise StackDown(f"the websocket server at {ws_url} does not answer ({reason})")
    return listeners


def check_channels(args: argparse.Namespace, sent: dict[str, set[str]], listeners: dict) -> list[str]:
    """Each channel's listing, subscriber and count hold exactly its own messages; the problems found."""
    problems = []
    deadline = time.monotonic() + args.timeout
    for channel, ids in sent.items():
        listed: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            listed = channel_listing(args.list_url, channel)
            if {m["id"] for m in listed} >= ids:
                break
            time.sleep(0.2)
        listed_here = [m["id"] for m in listed]
        strangers = [m["id"] for m in listed if m["channel"] != channel or m["id"] not in ids]
        print(
            f"channel {channel}: posted={len(ids)} listed={len(set(listed_here) & ids)} "
            f"missing={len(ids - set(listed_here))} dup={len(listed_here) - len(set(listed_here))} "
            f"foreign={len(strangers)}"
        )
        if set(listed_here) != ids or len(listed_here) != len(ids) or strangers:
            problems.append(f"the listing of {channel} is not exactly its {len(ids)} messages")
        if listeners:
            listener = listeners[channel]
            while time.monotonic() < deadline and not ids <= set(listener.ids):
                time.sleep(0.05)
            got = set(listener.ids)
            foreign = got - ids
            wrong = {i for i in got if listener.channels[i] != channel}
            print(
                f"           subscriber: received={len(got & ids)} missing={len(ids - got)} "
                f"foreign={len(foreign | wrong)} dup={len(listener.ids) - len(got)}"
            )
            if got != ids or wrong or len(listener.ids) != len(got):
                problems.append(f"the subscriber of {channel} did not get exactly its {len(ids)} messages")
    counts = channel_counts(args.list_url, set(sent))
    if counts != {channel: len(ids) for channel, ids in sent.items()}:
        problems.append(f"GET /channels counts {counts}")
    print(f"GET /channels: {counts}")
    return problems


def main() -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100, help="messages to post")
    parser.add_argument("--channels", type=int, default=0, help="post round-robin to this many fresh channels")
    parser.add_argument("--ingest-url", default=settings.ingestion_api_url, help=setting_origin("INGESTION_API_URL"))
    parser.add_argument("--list-url", default=settings.list_api_url, help=setting_origin("LIST_API_URL"))
    parser.add_argument("--ws-url", default=settings.ws_url, help=f"'' skips it; {setting_origin('WS_URL')}")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for persistence")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between posts")
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    channels = [f"e2e-{run}-{k + 1}" for k in range(args.channels)]
    try:
        check_up("ingestion API", f"{args.ingest_url}/healthz", setting_origin("INGESTION_API_URL"))
        check_up("list API", f"{args.list_url}/healthz", setting_origin("LIST_API_URL"))
        listeners = start_listeners(args.ws_url, channels) if args.ws_url else {}
    except StackDown as exc:
        print(f"error: {exc}: start the stack (scripts/run.sh) or give the URLs (--help)", file=sys.stderr)
        return 2
    listener = listeners.get(None)
    started = time.monotonic()
    accepted: set[str] = set()
    sent: dict[str, set[str]] = {channel: set() for channel in channels}
    posting = Progress()
    for i in range(args.count):
        channel = channels[i % len(channels)] if channels else None
        path = f"/channels/{channel}/messages" if channel else "/dummy"
        status, body = request("POST", f"{args.ingest_url}{path}", {"seq": i, "text": f"end to end #{i}"})
        if status != 202:
            print(f"POST {i} answered {status}: {body}", file=sys.stderr)
            return 1
        accepted.add(body["id"])
        if channel:
            sent[channel].add(body["id"])
        posting.update(f"posted {i + 1}/{args.count}")
        time.sleep(args.delay)
    posting.done(keep=False)
    posted = time.monotonic() - started
    where = f" to {len(channels)} channels" if channels else ""
    print(f"posted {len(accepted)} messages{where} in {posted:.2f}s ({len(accepted) / posted:.0f}/s)")

    deadline = time.monotonic() + args.timeout
    found: list[str] = []
    listing = Progress()
    while time.monotonic() < deadline:
        found = listed_ids(args.list_url, accepted)
        listing.update(f"listed {len(set(found))}/{len(accepted)}")
        if len(set(found)) == len(accepted):
            break
        time.sleep(0.2)
    listing.done()
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
    problems = check_channels(args, sent, listeners) if channels else []
    for each in listeners.values():
        each.done.set()
    for message_id in sorted(missing)[:20]:
        print(f"missing from the list API: {message_id}", file=sys.stderr)
    for message_id in sorted(live_missing)[:20]:
        print(f"missing from the websocket: {message_id}", file=sys.stderr)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if missing or duplicated or live_missing or problems else 0


if __name__ == "__main__":
    sys.exit(main())
