"""Benchmark harness: prints a table of figures and writes them as JSON.

    python scripts/bench.py ingest  [--ingest-url URL] [--seconds 10] [--procs 2] [--conns 8]
    python scripts/bench.py persist [--count 100000] [--batch 1] [--database-url URL] [--redis-url URL]

``ingest`` drives ``POST /dummy`` at saturation from separate processes
(loopback only, bounded in time) and reports requests/s and latency
p50/p99; point ``--ingest-url`` at any server speaking ``POST /dummy``.
``persist`` queues a backlog of ``--count`` messages (in tasks of
``--batch`` records, as single POSTs or batches produce), starts a real
Celery worker, and reports rows/s until the backlog is stored. Results go to
``bench-results/<figure>.json``. Never run as part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench-results"


def machine() -> dict[str, object]:
    """Describe where the figures were taken."""
    return {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))] if ordered else float("nan")


def _ingest_worker(url: str, seconds: float, conns: int, out: multiprocessing.Queue) -> None:
    """Post as fast as one process can over ``conns`` round-robin connections."""
    parts = urlsplit(url)
    body = json.dumps({"bench": True, "text": "x" * 100}).encode()
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    pool = [http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=10) for _ in range(conns)]
    i = 0
    while time.monotonic() < deadline:
        conn = pool[i % conns]
        i += 1
        started = time.perf_counter()
        try:
            conn.request("POST", f"{parts.path.rstrip('/')}/dummy", body, headers)
            response = conn.getresponse()
            response.read()
            status = response.status
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
        except (OSError, http.client.HTTPException):
            conn.close()
            status = 0
        latencies.append(time.perf_counter() - started)
        statuses[status] = statuses.get(status, 0) + 1
    out.put((latencies, statuses))


def bench_ingest(args: argparse.Namespace) -> dict[str, object]:
    out: multiprocessing.Queue = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=_ingest_worker, args=(args.ingest_url, args.seconds, args.conns, out))
        for _ in range(args.procs)
    ]
    for p in procs:
        p.start()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    for _ in procs:
        lat, st = out.get()
        latencies += lat
        for code, n in st.items():
            statuses[code] = statuses.get(code, 0) + n
    for p in procs:
        p.join()
    return {
        "figure": "ingest",
        "requests": len(latencies),
        "accepted_202": statuses.get(202, 0),
        "statuses": {str(k): v for k, v in statuses.items()},
        "requests_per_s": round(statuses.get(202, 0) / args.seconds),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
    }


def bench_persist(args: argparse.Namespace) -> dict[str, object]:
    import redis
    import sqlalchemy as sa

    import broker
    from messages import make_record, utc_now

    client = redis.Redis.from_url(args.redis_url)
    engine = sa.create_engine(args.database_url)
    with engine.begin() as conn:
        before = conn.exec_driver_sql("SELECT COUNT(*) FROM messages").scalar_one()
    queue = f"bench-{os.getpid()}"
    now = utc_now()
    pipe = client.pipeline(transaction=False)
    for start in range(0, args.count, args.batch):
        records = [make_record({"bench": i}, now) for i in range(start, min(args.count, start + args.batch))]
        pipe.lpush(queue, broker.task_message(records, queue))
        if len(pipe) >= 1000:
            pipe.execute()
    pipe.execute()
    env = {**os.environ, "REDIS_URL": args.redis_url, "SQLALCHEMY_DATABASE_URI": args.database_url}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", queue, "--concurrency", str(args.concurrency),
         "--loglevel", "WARNING", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        started = None
        stored = 0
        while stored < args.count:
            time.sleep(0.05)
            with engine.begin() as conn:
                stored = conn.exec_driver_sql("SELECT COUNT(*) FROM messages").scalar_one() - before
            if started is None and stored > 0:
                started = time.monotonic()
        elapsed = time.monotonic() - (started or time.monotonic())
    finally:
        worker.terminate()
        worker.wait(30)
        client.delete(queue)
    return {
        "figure": "persist",
        "database": engine.dialect.name,
        "messages": args.count,
        "records_per_task": args.batch,
        "worker_concurrency": args.concurrency,
        "seconds": round(elapsed, 2),
        "rows_per_s": round(args.count / elapsed) if elapsed else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="figure", required=True)
    ingest = sub.add_parser("ingest", help="single-message POST /dummy at saturation")
    ingest.add_argument("--ingest-url", default="http://127.0.0.1:5000")
    ingest.add_argument("--seconds", type=float, default=10.0)
    ingest.add_argument("--procs", type=int, default=2, help="load generator processes")
    ingest.add_argument("--conns", type=int, default=8, help="connections per process")
    persist = sub.add_parser("persist", help="rows/s draining a queued backlog")
    persist.add_argument("--count", type=int, default=100_000)
    persist.add_argument("--batch", type=int, default=1, help="records per queued task")
    persist.add_argument("--concurrency", type=int, default=2, help="Celery worker processes")
    persist.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    persist.add_argument("--database-url", default=os.environ.get("SQLALCHEMY_DATABASE_URI"), required=False)
    args = parser.parse_args()
    if args.figure == "persist" and not args.database_url:
        parser.error("persist needs --database-url (or SQLALCHEMY_DATABASE_URI) of a migrated database")
    result = bench_ingest(args) if args.figure == "ingest" else bench_persist(args)
    result["machine"] = machine()
    result["taken_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.figure}.json").write_text(json.dumps(result, indent=2))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
