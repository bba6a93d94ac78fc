"""Time list API pages at several depths, to check that page time does not grow with depth.

    python scripts/test_pagination.py [--list-url URL] [--depths 0,10k,100k,1M]
                                      [--limit 100] [--repeat 20] [--walk-limit 1000] [--order asc]
                                      [--check-ratio 1.2] [--plot chart.png] [--json result.json]
                                      [--token TOKEN]

Uses cursors only, as a client does: it walks the listing with
``--walk-limit`` pages (timed too, with a progress bar) to hold a cursor at
each depth, then requests the page of ``--limit`` rows at every depth
``--repeat`` times, visiting the depths in turn each round so that noise on
a busy machine falls on all of them alike. The first request at each depth
is reported apart (``first``), not in the median/p95.

Prints a table of latency by depth and the ratio of the deepest depth's
median to the shallowest's. A depth at or past the end of the listing is
skipped with a note, and the last full page before the end measured in its
place. Exits 1 if ``--check-ratio`` is given and the ratio exceeds it, 2 if
the API fails or the listing is empty. ``--list-url`` defaults to
``LIST_API_URL`` as the services read it: from the environment, else from
the stack ``scripts/run.sh`` is running from this checkout. ``--plot``
writes a PNG chart (needs matplotlib, a development dependency);
``--json`` writes every figure. ``--token`` is sent as a bearer token, for
a list API running with ``API_TOKENS``. Load rows first with
``scripts/make_sample_records.py``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.settings import load_settings, setting_origin


class PaginationError(Exception):
    """The listing cannot be measured as asked (API error, or a depth past its end)."""


class ListClient:
    """``GET /messages`` over one reusable HTTP connection, timing each request."""

    def __init__(self, base_url: str, order: str, timeout: float, token: str | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PaginationError(f"--list-url must be an http(s) URL, got {base_url!r}")
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self.connection = kind(parts.hostname, parts.port, timeout=timeout)
        self.path = parts.path.rstrip("/") + "/messages"
        self.order = order
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def page(self, limit: int, cursor: str | None) -> tuple[float, dict[str, Any]]:
        """Return (seconds from request to last byte, decoded page)."""
        query = {"limit": limit, "order": self.order, **({"cursor": cursor} if cursor else {})}
        started = time.perf_counter()
        try:
            self.connection.request("GET", f"{self.path}?{urlencode(query)}", headers=self.headers)
            response = self.connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.connection.close()
            raise PaginationError(f"GET {self.path} failed: {exc}") from None
        elapsed = time.perf_counter() - started
        if response.status == 401:
            raise PaginationError(f"GET {self.path} answered 401: the list API wants a bearer token (--token)")
        if response.status != 200:
            raise PaginationError(f"GET {self.path} answered {response.status}: {body[:300]!r}")
        return elapsed, json.loads(body)


@dataclass
class Depth:
    """The measurements at one depth (rows skipped before the timed page)."""

    depth: int
    cursor: str | None
    first_id: str | None = None
    rows: int = 0
    first_ms: float = math.nan
    samples_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "rows": self.rows,
            "first_id": self.first_id,
            "first_ms": self.first_ms,
            "median_ms": statistics.median(self.samples_ms),
            "p95_ms": percentile(self.samples_ms, 95),
            "max_ms": max(self.samples_ms),
            "samples_ms": self.samples_ms,
        }


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (of 20 samples, p95 is the 19th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * pct / 100) - 1)]


def parse_depths(text: str) -> list[int]:
    """Parse ``0,10k,100k,1M`` (or plain integers) into sorted, distinct depths."""
    scale = {"k": 1_000, "m": 1_000_000}
    depths = set()
    for part in text.replace("_", "").split(","):
        part = part.strip().lower()
        if not part:
            continue
        factor = scale.get(part[-1], 1)
        number = part[:-1] if factor > 1 else part
        if not number.isdigit():
            raise argparse.ArgumentTypeError(f"not a depth: {part!r} (use e.g. 0,10k,100k,1M)")
        depths.add(int(number) * factor)
    if not depths:
        raise argparse.ArgumentTypeError("give at least one depth")
    return sorted(depths)


@dataclass
class Walk:
    """What following the cursors found: a point at each reachable depth, and where the listing ends."""

    points: list[Depth] = field(default_factory=list)
    pages: list[list] = field(default_factory=list)  # [depth at its start, rows, milliseconds] per page
    boundaries: list[tuple[int, str | None]] = field(default_factory=lambda: [(0, None)])  # (depth, cursor)
    end: int | None = None  # rows in the listing, once the walk reached its last page


def walk(client: ListClient, depths: list[int], walk_limit: int, progress: bool) -> Walk:
    """Follow cursors from the start, keeping the cursor at each depth, up to the end of the listing."""
    found = Walk()
    cursor: str | None = None
    position = 0
    with tqdm(total=depths[-1], unit="rows", unit_scale=True, desc="walk", disable=not progress) as bar:
        for target in depths:
            while position < target and found.end is None:
                elapsed, page = client.page(min(walk_limit, target - position), cursor)
                found.pages.append([position, len(page["data"]), elapsed * 1000])
                position += len(page["data"])
                cursor = page["next_cursor"]
                if page["has_more"]:
                    found.boundaries.append((position, cursor))
                else:
                    found.end = position
                bar.update(len(page["data"]))
            if found.end is not None and target >= found.end:
                break  # no rows after this depth: nothing to time there
            found.points.append(Depth(target, cursor))
    return found


def clamp(found: Walk, depths: list[int], limit: int) -> tuple[list[int], Depth | None]:
    """Return the depths past the end, and a point at the last full page before it to time instead."""
    reached = {point.depth for point in found.points}
    skipped = [depth for depth in depths if depth not in reached]
    if not skipped or found.end is None:
        return skipped, None
    deepest = found.points[-1].depth if found.points else -1
    candidates = [(depth, cursor) for depth, cursor in found.boundaries if deepest < depth <= found.end - limit]
    return skipped, Depth(*candidates[-1]) if candidates else None


def measure(client: ListClient, points: list[Depth], limit: int, repeat: int) -> None:
    """Time the page of ``limit`` rows at every depth: one first request, then ``repeat`` rounds."""
    for round_ in range(repeat + 1):
        for point in points:
            elapsed, page = client.page(limit, point.cursor)
            if not page["data"] and point.depth == 0:
                raise PaginationError("the listing is empty: load rows first (scripts/make_sample_records.py)")
            if not page["data"]:
                raise PaginationError(f"no rows at depth {point.depth:,}: the listing ends there")
            if round_ == 0:
                point.first_ms, point.rows, point.first_id = elapsed * 1000, len(page["data"]), page["data"][0]["id"]
                continue
            if page["data"][0]["id"] != point.first_id:
                raise PaginationError(f"the page at depth {point.depth:,} changed between requests")
            point.samples_ms.append(elapsed * 1000)


def walk_summary(pages: list[list], seconds: float) -> dict[str, Any]:
    """Totals of the walk (``seconds`` of wall time), and the median page time of its first and last tenth."""
    if not pages:
        return {"pages": 0, "rows": 0, "seconds": seconds}
    times = [ms for _, _, ms in pages]
    tenth = max(1, len(times) // 10)
    rows = sum(n for _, n, _ in pages)
    return {
        "pages": len(pages),
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "page_median_ms": statistics.median(times),
        "first_tenth_median_ms": statistics.median(times[:tenth]),
        "last_tenth_median_ms": statistics.median(times[-tenth:]),
        "page_times": pages,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'depth':>12} {'rows':>6} {'first ms':>9} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}"]
    for r in rows:
        lines.append(
            f"{r['depth']:>12,} {r['rows']:>6} {r['first_ms']:>9.2f} {r['median_ms']:>10.2f} "
            f"{r['p95_ms']:>8.2f} {r['max_ms']:>8.2f}"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Draw latency by depth (and the walk's page times along the way) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows, walked = result["depths"], result["walk"]
    panels = 2 if walked["pages"] else 1
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    ax = axes[0][0]
    labels = [f"{r['depth']:,}" for r in rows]
    positions = range(len(rows))
    for x, r in zip(positions, rows, strict=True):
        ax.scatter([x] * len(r["samples_ms"]), r["samples_ms"], color="tab:blue", alpha=0.25, s=12)
    ax.plot(positions, [r["median_ms"] for r in rows], "o-", color="tab:blue", label="median")
    ax.plot(positions, [r["p95_ms"] for r in rows], "v--", color="tab:orange", label="p95")
    ax.set_xticks(list(positions), labels)
    ax.set_xlabel("depth (rows before the page)")
    ax.set_ylabel("ms per request")
    ax.set_ylim(bottom=0)
    ax.set_title(f"page of {result['limit']} rows, {result['repeat']} requests per depth")
    ax.legend()
    if panels == 2:
        ax = axes[0][1]
        times = walked["page_times"]
        ax.plot([p[0] for p in times], [p[2] for p in times], ".", color="tab:green", alpha=0.4, markersize=3)
        step = max(1, len(times) // 50)
        groups = [times[i : i + step] for i in range(0, len(times), step)]
        centres = [statistics.median(p[0] for p in g) for g in groups]
        ax.plot(centres, [statistics.median(p[2] for p in g) for g in groups], "-", color="tab:green", label="median")
        ax.legend()
        ax.xaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
        ax.set_xlabel("depth (rows before the page)")
        ax.set_ylabel("ms per request")
        ax.set_ylim(bottom=0)
        ax.set_title(f"cursor walk, pages of up to {result['walk_limit']} rows")
    figure.suptitle(f"GET /messages latency by depth: ratio deepest/first {result['ratio']:.2f}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Walk, measure, and return every figure."""
    client = ListClient(args.list_url, args.order, args.timeout, args.token)
    walk_started = time.perf_counter()
    found = walk(client, args.depths, args.walk_limit, not args.no_progress)
    walk_seconds = time.perf_counter() - walk_started
    skipped, instead = clamp(found, args.depths, args.limit)
    points = found.points + ([instead] if instead else [])
    if not points:
        raise PaginationError("the listing is empty: load rows first (scripts/make_sample_records.py)")
    measure(client, points, args.limit, args.repeat)
    rows = [p.summary() for p in points]
    return {
        "list_url": args.list_url,
        "order": args.order,
        "limit": args.limit,
        "repeat": args.repeat,
        "walk_limit": args.walk_limit,
        "depths": rows,
        "listing_rows": found.end,
        "skipped_depths": skipped,
        "clamped_depth": instead.depth if instead else None,
        "walk": walk_summary(found.pages, walk_seconds),
        "ratio": rows[-1]["median_ms"] / rows[0]["median_ms"],
        "check_ratio": args.check_ratio,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }


def report(result: dict[str, Any]) -> None:
    if result["skipped_depths"]:
        past = ", ".join(f"{depth:,}" for depth in result["skipped_depths"])
        instead = result["clamped_depth"]
        print(
            f"note: the listing has {result['listing_rows']:,} rows, so depth {past} is at or past its end: skipped"
            + (f"; timed the last full page, at depth {instead:,}, instead" if instead is not None else "")
        )
    print(table(result["depths"]))
    w = result["walk"]
    if w["pages"]:
        print(
            f"walk: {w['rows']:,} rows in {w['pages']:,} pages of up to {result['walk_limit']} in "
            f"{w['seconds']:.1f}s ({w['rows_per_s']:,.0f} rows/s); page median {w['page_median_ms']:.1f} ms, "
            f"first tenth {w['first_tenth_median_ms']:.1f} ms, last tenth {w['last_tenth_median_ms']:.1f} ms"
        )
    deepest, first = result["depths"][-1], result["depths"][0]
    print(f"ratio deepest/first (median): {result['ratio']:.2f} (depth {deepest['depth']:,} vs {first['depth']:,})")


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--list-url",
        default=settings.list_api_url,
        help=f"list API base URL (default {settings.list_api_url}: {setting_origin('LIST_API_URL')})",
    )
    parser.add_argument(
        "--depths", type=parse_depths, default=parse_depths("0,10k,100k,1M"), help="default 0,10k,100k,1M"
    )
    parser.add_argument("--limit", type=int, default=100, help="rows in each timed page (default 100)")
    parser.add_argument("--repeat", type=int, default=20, help="timed requests per depth (default 20)")
    parser.add_argument("--walk-limit", type=int, default=1000, help="rows per page while walking (default 1000)")
    parser.add_argument("--order", choices=("asc", "desc"), default="asc", help="listing order (default asc)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    parser.add_argument("--check-ratio", type=float, help="exit 1 if deepest/first median exceeds this")
    parser.add_argument("--plot", type=Path, help="write a PNG chart here (needs matplotlib)")
    parser.add_argument("--json", type=Path, help="write every figure here as JSON")
    parser.add_argument("--token", help="bearer token, when the list API runs with API_TOKENS")
    parser.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    args = parser.parse_args(argv)
    if not 1 <= args.limit <= 1000 or not 1 <= args.walk_limit <= 1000 or args.repeat < 1:
        parser.error("--limit and --walk-limit must be 1..1000, --repeat at least 1")
    try:
        result = run(args)
    except PaginationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report(result)
    failed = args.check_ratio is not None and result["ratio"] > args.check_ratio
    result["ok"] = not failed
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(result, args.plot)
        print(f"chart written to {args.plot}")
    if failed:
        print(f"FAIL: ratio {result['ratio']:.2f} exceeds --check-ratio {args.check_ratio}", file=sys.stderr)
        return 1
    if args.check_ratio is not None:
        print(f"ok: ratio {result['ratio']:.2f} is within --check-ratio {args.check_ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
