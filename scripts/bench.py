"""Benchmark harness: prints a table of figures and writes them as JSON.

    python scripts/bench.py ingest  [--ingest-url URL] [--seconds 10] [--procs 2] [--conns 8]
    python scripts/bench.py persist [--count 100000] [--batch 1] [--channels 1] [--workers 1]
                                    [--database-url URL] [--redis-url URL]
    python scripts/bench.py commits [--threads 4] [--count 1200] [--database-url URL]
    python scripts/bench.py latency [--ingest-url URL] [--ws-url URL] [--rate 200] [--seconds 10]
    python scripts/bench.py fanout  [--ws-url URL] [--redis-url URL] [--clients 1000] [--rates 50,100,200]
    python scripts/bench.py cost    [--rate 150] [--seconds 20] [--baseline] [--database-url URL] [--redis-url URL]
    python scripts/bench.py floors  [--rate 300] [--seconds 8] [--rounds 2]

``ingest`` drives ``POST /dummy`` at saturation from separate processes
(loopback only, bounded in time) and reports requests/s and latency
p50/p99; point ``--ingest-url`` at any server speaking ``POST /dummy``.
``persist`` queues a backlog of ``--count`` messages (in tasks of
``--batch`` records, as single POSTs or batches produce; the records
round-robin over ``--channels`` channels), starts ``--workers`` real Celery
worker instances, and reports rows/s until the backlog is stored. ``commits``
saves ``--count`` single-record transactions from ``--threads`` threads
through ``storage.save_messages`` (the worker's save, without Celery), all
of one channel: where commits, not the workers' CPU, are the limit (no row
is shared by two saves, so they scale with writers). ``latency``
posts at a light fixed rate and times POST -> websocket frame. ``fanout``
connects many websocket clients (from separate processes), publishes into
the live stream at increasing rates, and reports deliveries/s, latency and
the wsserver's memory; one extra client never reads. ``cost`` starts the
stack itself and reports CPU-seconds per 1,000 stored messages for every
process, beside a straightforward baseline (``scripts/bench_cost.py``). ``floors``
runs that baseline's parse-and-202 handler alone under gunicorn's sync and
gthread workers and granian's WSGI interface, alternated ``--rounds`` times:
``wrk``'s maximum and the CPU per request at a paced ``--rate``. Results go to
``bench-results/<figure>.json``. Never run as part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import itertools
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

import bench_cost  # noqa: E402 (scripts/, beside this file)


def machine() -> dict[str, object]:
    """Describe where the figures were taken."""
    return {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))] if ordered else float("nan")


def _ingest_worker(url: str, seconds: float, conns: int, out: multiprocessing.Queue, batch: int = 0) -> None:
    """Post as fast as one process can over ``conns`` round-robin connections (``batch``: batch POSTs)."""
    parts = urlsplit(url)
    message = {"bench": True, "text": "x" * 100}
    body = json.dumps([message] * batch if batch else message).encode()
    path = f"{parts.path.rstrip('/')}/dummy" + ("/batch" if batch else "")
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
            conn.request("POST", path, body, headers)
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
    batch = getattr(args, "batch", 0)
    procs = [
        multiprocessing.Process(target=_ingest_worker, args=(args.ingest_url, args.seconds, args.conns, out, batch))
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
    accepted = statuses.get(202, 0)
    return {
        "figure": "batch" if batch else "ingest",
        **({"messages_per_batch": batch, "messages_per_s": round(accepted * batch / args.seconds)} if batch else {}),
        "requests": len(latencies),
        "accepted_202": statuses.get(202, 0),
        "statuses": {str(k): v for k, v in statuses.items()},
        "requests_per_s": round(statuses.get(202, 0) / args.seconds),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
    }


def _paced_poster(url: str, rate: float, seconds: float, sample_every: int, out: multiprocessing.Queue) -> None:
    """POST at a fixed rate from 8 threads (8 concurrent clients); sample (id, post time) pairs for the lag."""
    import threading

    parts = urlsplit(url)
    body = json.dumps({"bench": "sustained"}).encode()
    statuses: dict[int, int] = {}
    samples: list[tuple[str, float]] = []
    lock = threading.Lock()
    threads = 8

    def client(offset: float) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=10)
        next_at = time.perf_counter() + offset
        deadline = next_at + seconds
        sent = 0
        while next_at < deadline and time.perf_counter() < deadline:  # bounded in count and in time
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            posted_at = time.time()
            try:
                conn.request("POST", "/dummy", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                answer = response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                status, answer = 0, b""
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 202 and sent % sample_every == 0:
                    samples.append((json.loads(answer)["id"], posted_at))
            sent += 1
            next_at += threads / rate

    workers = [threading.Thread(target=client, args=(i / rate,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put((statuses, samples))


def _follower(list_url: str, seconds: float, out: multiprocessing.Queue) -> None:
    """Follow the listing with its cursor, noting when each id first becomes visible."""
    parts = urlsplit(list_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=10)
    seen: dict[str, float] = {}
    # Cursors are positions, whatever the order: the cursor of the newest row (a one-row desc page)
    # continues forward from it, so rows stored before the run are not counted.
    conn.request("GET", "/messages?order=desc&limit=1")
    newest_cursor = json.loads(conn.getresponse().read())["next_cursor"]
    deadline = time.time() + seconds
    while time.time() < deadline:
        query = "limit=1000" + (f"&cursor={newest_cursor}" if newest_cursor else "")
        conn.request("GET", f"/messages?{query}")
        page = json.loads(conn.getresponse().read())
        now = time.time()
        for message in page["data"]:
            seen.setdefault(message["id"], now)
        if page["next_cursor"]:
            newest_cursor = page["next_cursor"]
        if not page["has_more"]:
            time.sleep(0.02)
    out.put(seen)


def bench_sustained(args: argparse.Namespace) -> dict[str, object]:
    import redis

    client = redis.Redis.from_url(args.redis_url)
    posters_out: multiprocessing.Queue = multiprocessing.Queue()
    follower_out: multiprocessing.Queue = multiprocessing.Queue()
    follower = multiprocessing.Process(target=_follower, args=(args.list_url, args.seconds + args.drain, follower_out))
    follower.start()
    posters = [
        multiprocessing.Process(
            target=_paced_poster, args=(args.ingest_url, args.rate / args.procs, args.seconds, 20, posters_out)
        )
        for _ in range(args.procs)
    ]
    for p in posters:
        p.start()
    backlog: list[tuple[float, int]] = []
    started = time.time()
    while time.time() - started < args.seconds + args.drain:
        backlog.append((round(time.time() - started, 1), int(client.llen(args.queue))))
        time.sleep(1)
    statuses: dict[int, int] = {}
    samples: list[tuple[str, float]] = []
    for _ in posters:
        st, sm = posters_out.get(timeout=120)
        samples += sm
        for code, n in st.items():
            statuses[code] = statuses.get(code, 0) + n
    seen = follower_out.get(timeout=120)
    for p in [*posters, follower]:
        p.join()
    lags = [seen[i] - t for i, t in samples if i in seen]
    during = [depth for t, depth in backlog if t <= args.seconds]
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(7, 3.5))
        axis.plot([t for t, _ in backlog], [d for _, d in backlog])
        axis.axvline(args.seconds, linestyle=":", color="grey")
        axis.set(xlabel="seconds", ylabel="task messages queued", title=f"backlog at {args.rate:.0f} POST/s offered")
        figure.tight_layout()
        figure.savefig(args.plot)
    return {
        "figure": "sustained",
        "offered_per_s": args.rate,
        "seconds": args.seconds,
        "accepted_per_s": round(statuses.get(202, 0) / args.seconds),
        "statuses": {str(k): v for k, v in statuses.items()},
        "backlog_max": max(during, default=0),
        "backlog_at_end_of_load": during[-1] if during else 0,
        "backlog_after_drain": backlog[-1][1] if backlog else 0,
        "lag_samples": len(samples),
        "lag_samples_listed": len(lags),
        "post_to_listed_p50_ms": round(percentile(lags, 50) * 1000, 1),
        "post_to_listed_p99_ms": round(percentile(lags, 99) * 1000, 1),
    }


def bench_persist(args: argparse.Namespace) -> dict[str, object]:
    import sqlalchemy as sa

    from relay.broker.contract import make_celery, send_records
    from relay.records import make_record, utc_now
    from relay.settings import load_settings

    engine = sa.create_engine(args.database_url)
    channels = [f"bench-{k}" for k in range(args.channels)]
    with engine.begin() as conn:
        before = conn.exec_driver_sql("SELECT COUNT(*) FROM messages").scalar_one()
        # Positions and offsets as the accept script would give them: above everything stored.
        position = itertools.count(conn.exec_driver_sql("SELECT COALESCE(MAX(seq), 0) FROM messages").scalar_one() + 1)
        offsets = {
            channel: itertools.count(
                conn.execute(
                    sa.text("SELECT COALESCE(MAX(channel_offset), 0) FROM messages WHERE channel = :c"), {"c": channel}
                ).scalar_one()
                + 1
            )
            for channel in channels
        }
    queue = f"bench-{os.getpid()}"
    now = utc_now()
    celery = make_celery(load_settings(redis_url=args.redis_url, persist_queue=queue))
    for start in range(0, args.count, args.batch):
        records = [
            make_record({"bench": i}, now, channel=channels[i % len(channels)])
            for i in range(start, min(args.count, start + args.batch))
        ]
        for record in records:
            record["offset"], record["position"] = next(offsets[record["channel"]]), next(position)
        send_records(celery, queue, records, max_bytes=2**31)  # one task message of --batch records
    env = {
        **os.environ, "REDIS_URL": args.redis_url, "SQLALCHEMY_DATABASE_URI": args.database_url,
        "PERSIST_QUEUE": queue, "WORKER_CONCURRENCY": str(args.concurrency),
    }  # fmt: skip
    # The worker as every launcher starts it (relay/serve.py), with the benchmark's pool and quieter logs.
    command = [sys.executable, "-m", "relay.serve", "worker", "--pool", args.pool, "--loglevel", "WARNING",
               "--without-gossip", "--without-mingle"]  # fmt: skip
    database_cpu_before = _database_cpu_seconds()
    workers = [
        subprocess.Popen([*command, "--hostname", f"bench{n}@%h"], cwd=ROOT, env=env) for n in range(args.workers)
    ]
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
        # The workers' start-up is counted too: it is the same for every variant.
        worker_cpu = sum(_tree_cpu_seconds(worker.pid) for worker in workers)
        database_cpu = _database_cpu_seconds() - database_cpu_before
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(30)
        with celery.connection_for_write() as connection:
            connection.default_channel.queue_purge(queue)
    return {
        "figure": "persist",
        "database": engine.dialect.name,
        "messages": args.count,
        "records_per_task": args.batch,
        "channels": args.channels,
        "worker_instances": args.workers,
        "worker_concurrency": args.concurrency,
        "worker_pool": args.pool,
        "seconds": round(elapsed, 2),
        "rows_per_s": round(args.count / elapsed) if elapsed else None,
        # CPU is steadier than wall time on a shared machine: compare variants by it.
        "worker_cpu_ms_per_1000_rows": round(worker_cpu * 1e6 / args.count, 1),
        "database_cpu_ms_per_1000_rows": round(database_cpu * 1e6 / args.count, 1) if database_cpu else None,
    }


def bench_commits(args: argparse.Namespace) -> dict[str, object]:
    import threading

    import sqlalchemy as sa

    from relay import storage
    from relay.records import make_record, utc_now

    app = storage.create_app(
        {"SQLALCHEMY_DATABASE_URI": args.database_url, "SQLALCHEMY_ENGINE_OPTIONS": {"pool_size": args.threads + 2}}
    )
    with app.app_context():
        last_position, last_offsets = storage.position_floors()
    # Numbers above everything stored, as the accept script would give them, one at a time.
    numbers = itertools.count(max(last_position, last_offsets.get("bench-commits", 0)) + 1)
    lock = threading.Lock()
    per_thread = args.count // args.threads

    def saves(k: int) -> None:
        with app.app_context():
            for i in range(per_thread):
                record = make_record({"thread": k, "i": i}, utc_now(), channel="bench-commits")
                with lock:
                    record["position"] = record["offset"] = next(numbers)
                storage.save_messages([record])
            storage.db.session.remove()

    threads = [threading.Thread(target=saves, args=(k,)) for k in range(args.threads)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    with app.app_context():
        storage.db.engine.dispose()
    return {
        "figure": "commits",
        "database": sa.make_url(args.database_url).get_backend_name(),
        "threads": args.threads,
        "transactions": per_thread * args.threads,
        "seconds": round(elapsed, 2),
        "transactions_per_s": round(per_thread * args.threads / elapsed),
    }


def _tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (a Celery worker and its pool)."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _database_cpu_seconds() -> float:
    """CPU of a local MariaDB/MySQL server process, if one runs here (0 otherwise)."""
    import psutil

    total = 0.0
    for process in psutil.process_iter(["name", "cpu_times"]):
        if process.info["name"] in ("mariadbd", "mysqld") and process.info["cpu_times"]:
            total += process.info["cpu_times"].user + process.info["cpu_times"].system
    return total


def bench_latency(args: argparse.Namespace) -> dict[str, object]:
    import threading

    from websockets.sync.client import connect

    arrived: dict[str, float] = {}
    ready = threading.Event()
    done = threading.Event()

    def listen() -> None:
        with connect(f"{args.ws_url.rstrip('/')}/") as ws:
            while not done.is_set():
                try:
                    frame = json.loads(ws.recv(timeout=0.2))
                except TimeoutError:
                    continue
                if frame.get("type") == "ready":
                    ready.set()
                elif "id" in frame:
                    arrived[frame["id"]] = time.perf_counter()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    ready.wait(10)
    parts = urlsplit(args.ingest_url)
    body = json.dumps({"bench": "latency"}).encode()
    sent: dict[str, float] = {}
    interval = 1 / args.rate
    next_at = time.perf_counter()
    deadline = next_at + args.seconds
    while next_at < deadline:
        time.sleep(max(0.0, next_at - time.perf_counter()))
        started = time.perf_counter()
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=10)
        conn.request("POST", "/dummy", body, {"Content-Type": "application/json"})
        sent[json.loads(conn.getresponse().read())["id"]] = started
        conn.close()
        next_at += interval
    time.sleep(1)
    done.set()
    latencies = [arrived[i] - t for i, t in sent.items() if i in arrived]
    return {
        "figure": "latency",
        "offered_per_s": args.rate,
        "posted": len(sent),
        "received": len(latencies),
        "post_to_ws_p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "post_to_ws_p99_ms": round(percentile(latencies, 99) * 1000, 2),
    }


def _fanout_clients(url: str, clients: int, seconds: float, out: multiprocessing.Queue) -> None:
    """Hold ``clients`` connections; report (deliveries, latencies) for frames stamped with a send time."""
    import asyncio

    from websockets.asyncio.client import connect

    async def one(ws, latencies: list[float], stop: float) -> int:
        count = 0
        while time.time() < stop:
            try:
                raw = await asyncio.wait_for(ws.recv(), max(0.01, stop - time.time()))
            except TimeoutError:
                break
            if '"payload"' in raw:  # a message, not a control frame; parse only the sampled ones
                count += 1
                if count % 10 == 0:
                    latencies.append(time.time() - json.loads(raw)["payload"]["t"])
        return count

    async def run() -> tuple[int, list[float]]:
        connections = [await connect(url, compression=None, max_queue=None) for _ in range(clients)]
        for ws in connections:
            await ws.recv()  # ready
        out.put("connected")
        stop = time.time() + seconds
        latencies: list[float] = []
        counts = await asyncio.gather(*(one(ws, latencies, stop) for ws in connections))
        for ws in connections:
            await ws.close()
        return sum(counts), latencies

    import uvloop

    out.put(uvloop.run(run()))  # the cheaper loop keeps the load generator from being the limit


def bench_fanout(args: argparse.Namespace) -> dict[str, object]:
    import socket

    import psutil
    import redis

    from relay.broker.producer import Producer

    port = urlsplit(args.ws_url).port or 8765
    server = next(
        (psutil.Process(c.pid) for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"),
        None,
    )
    idle = socket.create_connection(("127.0.0.1", port))
    idle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    idle.sendall(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    pub = Producer(redis.Redis.from_url(args.redis_url), "bench-fanout-unused", args.stream, 10_000, 60)
    rows = []
    for rate in [int(r) for r in args.rates.split(",")]:
        out: multiprocessing.Queue = multiprocessing.Queue()
        procs = [
            multiprocessing.Process(
                target=_fanout_clients,
                args=(args.ws_url.rstrip("/") + "/", args.clients // args.procs, args.seconds + 2, out),
            )
            for _ in range(args.procs)
        ]
        for p in procs:
            p.start()
        for _ in procs:
            out.get(timeout=120)
        rss_before = server.memory_info().rss if server else 0
        cpu_before = sum(server.cpu_times()[:2]) if server else 0.0
        published = 0
        next_at = time.perf_counter()
        deadline = next_at + args.seconds
        while next_at < deadline:
            time.sleep(max(0.0, next_at - time.perf_counter()))
            pipe = pub.client.pipeline(transaction=False)
            frame = json.dumps({"id": f"bench-{published}", "received_at": "", "payload": {"t": time.time()}})
            pipe.xadd(args.stream, {"id": f"bench-{published}", "frame": frame}, maxlen=10_000, approximate=True)
            pipe.execute()
            published += 1
            next_at += 1 / rate
        delivered, latencies = 0, []
        for _ in procs:
            count, lat = out.get(timeout=120)
            delivered += count
            latencies += lat
        for p in procs:
            p.join()
        rows.append({
            "offered_msgs_per_s": rate,
            "clients": args.clients,
            "published": published,
            "delivered": delivered,
            "delivered_per_s": round(delivered / args.seconds),
            "expected_per_s": rate * args.clients,
            "p50_ms": round(percentile(latencies, 50) * 1000, 2),
            "p99_ms": round(percentile(latencies, 99) * 1000, 2),
            "server_cpu_pct": round(100 * (sum(server.cpu_times()[:2]) - cpu_before) / (args.seconds + 2))
            if server else None,
            "server_rss_mib": round(server.memory_info().rss / 2**20, 1) if server else None,
            "rss_growth_mib": round((server.memory_info().rss - rss_before) / 2**20, 1) if server else None,
        })  # fmt: skip
        print(rows[-1])
    idle.close()
    return {"figure": "fanout", "rows": rows, "idle_client": "one client that never reads stayed connected"}


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
    persist.add_argument("--concurrency", type=int, default=2, help="processes per worker instance")
    persist.add_argument("--workers", type=int, default=1, help="worker instances (celery -A tasks worker)")
    persist.add_argument("--channels", type=int, default=1, help="channels the records round-robin over")
    persist.add_argument("--pool", default="prefork", choices=("prefork", "solo", "threads"), help="Celery pool")
    persist.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    persist.add_argument("--database-url", default=os.environ.get("SQLALCHEMY_DATABASE_URI"), required=False)
    commits = sub.add_parser("commits", help="single-record saves/s from several threads, no Celery")
    commits.add_argument("--threads", type=int, default=4)
    commits.add_argument("--count", type=int, default=1200, help="transactions in all")
    commits.add_argument("--database-url", default=os.environ.get("SQLALCHEMY_DATABASE_URI"), required=False)
    latency = sub.add_parser("latency", help="POST -> websocket frame at a light fixed rate")
    latency.add_argument("--ingest-url", default="http://127.0.0.1:5000")
    latency.add_argument("--ws-url", default="ws://127.0.0.1:8765")
    latency.add_argument("--rate", type=float, default=200.0)
    latency.add_argument("--seconds", type=float, default=10.0)
    fanout = sub.add_parser("fanout", help="deliveries/s to many websocket clients")
    fanout.add_argument("--ws-url", default="ws://127.0.0.1:8765")
    fanout.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    fanout.add_argument("--stream", default="messages:live")
    fanout.add_argument("--clients", type=int, default=1000)
    fanout.add_argument("--procs", type=int, default=2, help="client processes")
    fanout.add_argument("--rates", default="50,100,150", help="messages/s to publish, comma-separated")
    fanout.add_argument("--seconds", type=float, default=10.0)
    batch = sub.add_parser("batch", help="POST /dummy/batch with 1,000-message batches at saturation")
    batch.add_argument("--ingest-url", default="http://127.0.0.1:5000")
    batch.add_argument("--seconds", type=float, default=10.0)
    batch.add_argument("--procs", type=int, default=2)
    batch.add_argument("--conns", type=int, default=2)
    batch.add_argument("--batch", type=int, default=1000)
    sustained = sub.add_parser("sustained", help="a fixed offered rate: backlog over time and POST -> listed lag")
    sustained.add_argument("--ingest-url", default="http://127.0.0.1:5000")
    sustained.add_argument("--list-url", default="http://127.0.0.1:5001")
    sustained.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6390/0"))
    sustained.add_argument("--queue", default="persist")
    sustained.add_argument("--rate", type=float, default=3000.0)
    sustained.add_argument("--seconds", type=float, default=60.0)
    sustained.add_argument("--drain", type=float, default=10.0, help="seconds to keep watching after the load")
    sustained.add_argument("--procs", type=int, default=2)
    sustained.add_argument("--plot", help="write a PNG chart of the backlog here")
    cost = sub.add_parser("cost", help="CPU per stored message, every stack process, beside a baseline")
    bench_cost.add_arguments(cost)
    floors = sub.add_parser("floors", help="the parse-and-202 floor handler under gunicorn sync, gthread and granian")
    floors.add_argument("--rate", type=float, default=300.0, help="paced POST/s for the CPU per request")
    floors.add_argument("--seconds", type=float, default=8.0, help="length of each paced run and each wrk run")
    floors.add_argument("--rounds", type=int, default=2, help="times each server is measured, alternated")
    floors.add_argument("--settle", type=float, default=1.0, help="seconds between start-up and the load")
    floors.add_argument("--drain", type=float, default=0.0, help=argparse.SUPPRESS)
    floors.add_argument("--max-conns", type=int, default=32, help="wrk's connections")
    floors.add_argument("--redis-url", default=None, help=argparse.SUPPRESS)
    floors.add_argument("--database-url", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.figure in ("persist", "commits") and not args.database_url:
        parser.error(f"{args.figure} needs --database-url (or SQLALCHEMY_DATABASE_URI) of a migrated database")
    figures = {
        "ingest": bench_ingest,
        "batch": bench_ingest,
        "persist": bench_persist,
        "commits": bench_commits,
        "sustained": bench_sustained,
        "latency": bench_latency,
        "fanout": bench_fanout,
        "cost": bench_cost.bench_cost,
        "floors": bench_cost.bench_floors,
    }
    try:
        result = figures[args.figure](args)
    except bench_cost.StackExited as exc:
        sys.exit(f"error: {exc}")
    result["machine"] = machine()
    result["taken_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.figure}.json").write_text(json.dumps(result, indent=2))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.figure == "cost":
        print("\nCPU-seconds per 1,000 stored messages, by process group:\n" + bench_cost.table(result))
    if args.figure == "floors":
        print("\n" + bench_cost.floors_table(result))


if __name__ == "__main__":
    main()
