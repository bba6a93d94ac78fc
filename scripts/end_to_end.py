"""Post N messages to a running stack and check each one arrives in the list API.

    python scripts/end_to_end.py [--count 100] [--ingest-url http://127.0.0.1:5000]
                                 [--list-url http://127.0.0.1:5001] [--timeout 30]

Exits non-zero (and says which ids) if any accepted message is missing or
listed twice after ``--timeout`` seconds. Defaults match ``scripts/run.sh``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any


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
    """Return the ids among ``wanted`` found by walking the listing newest-first."""
    found: list[str] = []
    cursor = None
    while True:
        query = "order=desc&limit=1000" + (f"&cursor={cursor}" if cursor else "")
        _, page = request("GET", f"{list_url}/messages?{query}")
        found += [m["id"] for m in page["data"] if m["id"] in wanted]
        cursor = page["next_cursor"]
        if not page["has_more"] or len(set(found)) >= len(wanted):
            return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="messages to post (default 100)")
    parser.add_argument("--ingest-url", default="http://127.0.0.1:5000")
    parser.add_argument("--list-url", default="http://127.0.0.1:5001")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for persistence")
    args = parser.parse_args()

    started = time.monotonic()
    accepted: set[str] = set()
    for i in range(args.count):
        status, body = request("POST", f"{args.ingest_url}/dummy", {"seq": i, "text": f"end to end #{i}"})
        if status != 202:
            print(f"POST {i} answered {status}: {body}", file=sys.stderr)
            return 1
        accepted.add(body["id"])
        print(f"\rposted {i + 1}/{args.count}", end="", flush=True)
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
    print(f"summary: accepted={len(accepted)} listed={len(set(found))} missing={len(missing)} dup={len(duplicated)}")
    print(f"all listed {time.monotonic() - started:.2f}s after the first POST")
    for message_id in sorted(missing)[:20]:
        print(f"missing: {message_id}", file=sys.stderr)
    return 1 if missing or duplicated else 0


if __name__ == "__main__":
    sys.exit(main())
