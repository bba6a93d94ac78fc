"""Settings for every service, read from the environment in one place.

Each service calls :func:`load_settings` once (in its app factory or
``main()``) and passes the resulting :class:`Settings` around; nothing else
reads ``os.environ``. Every variable is listed in ``ENV_VARS`` with its
default and meaning, and the README's configuration table mirrors it (a test
keeps them in sync).

``APP_ENV=production`` (the compose stack) turns on fail-fast checks: a
setting marked required must be set explicitly, and secrets must not keep
their development placeholder.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent
DEV_SECRET = "dev-only-insecure-secret"  # noqa: S105 (placeholder; production refuses it)
# Written by scripts/run.sh (scripts/local_stack.py): the settings of the stack it runs from this checkout.
LOCAL_STACK_FILE = PROJECT_DIR / "var" / "local-stack.env"


@dataclass(frozen=True)
class Var:
    """One environment variable: its default, whether production needs it, and what it does."""

    default: str
    help: str
    required_in_production: bool = False


ENV_VARS: dict[str, Var] = {
    "APP_ENV": Var("development", "`development` or `production` (production fails fast on missing settings)."),
    "SQLALCHEMY_DATABASE_URI": Var(
        f"sqlite:///{PROJECT_DIR / 'var' / 'messages.db'}",
        "Database URL (SQLite file locally, `mysql+pymysql://...` for MySQL/MariaDB).",
        required_in_production=True,
    ),
    "REDIS_URL": Var(
        "redis://127.0.0.1:6379/0", "Redis for the task queue, the live stream and idempotency keys.", True
    ),
    "REDIS_TIMEOUT_SECONDS": Var("0.5", "Connect/read timeout on the request path; Redis down means 503 within ~1 s."),
    "INGESTION_API_PORT": Var("5000", "Port of the ingestion API (`POST /dummy`)."),
    "LIST_API_PORT": Var("5001", "Port of the list API (`GET /messages`, the live page at `/`)."),
    "WS_PORT": Var("8765", "Port of the websocket server."),
    "BIND_HOST": Var(
        "127.0.0.1",
        "Address the services bind: the APIs, the websocket server, the worker's metrics (`0.0.0.0` in containers).",
    ),
    "LIST_API_URL": Var(
        "http://127.0.0.1:${LIST_API_PORT}",
        "Public base URL of the list API, used in `Location` and `Link` headers and by the live page.",
        True,
    ),
    "INGESTION_API_URL": Var(
        "http://127.0.0.1:${INGESTION_API_PORT}",
        "Public base URL of the ingestion API; the live page posts there.",
        True,
    ),
    "WS_URL": Var(
        "ws://127.0.0.1:${WS_PORT}", "Public URL of the websocket server; the live page connects there.", True
    ),
    "SECRET_KEY": Var(DEV_SECRET, "Signs pagination cursors (tamper-evident). Must be set in production.", True),
    "MAX_MESSAGE_BYTES": Var("65536", "Largest message in bytes: a `POST /dummy` body, and any message stored (413)."),
    "MAX_BATCH_MESSAGES": Var("1000", "Most messages in one `POST /dummy/batch`."),
    "MAX_BATCH_BYTES": Var("8388608", "Largest accepted `POST /dummy/batch` body, in bytes (413 above)."),
    "INGEST_GROUP_COMMIT": Var(
        "1", "1: concurrent requests of a process share one queue write (gunicorn's gevent or gthread workers)."
    ),
    "IDEMPOTENCY_TTL_SECONDS": Var("86400", "How long an `Idempotency-Key` is remembered."),
    "PERSIST_QUEUE": Var("persist", "Celery queue (Redis list) holding persistence tasks."),
    "CELERY_VISIBILITY_TIMEOUT": Var("120", "Seconds before an unacknowledged task of a dead worker is redelivered."),
    "PERSIST_BATCH_SIZE": Var("1000", "Most messages the worker writes in one transaction."),
    "PERSIST_MESSAGE_MAX_BYTES": Var(
        "65536", "Most bytes of records in one task message; a larger write is split over several (atomically)."
    ),
    "WORKER_PREFETCH_BYTES": Var(
        "16777216", "Task-message bytes a worker pool process may hold prefetched (bounds worker memory)."
    ),
    "PERSIST_FLUSH_SECONDS": Var("0.05", "Longest a queued message waits for its batch to fill before it is written."),
    "PERSIST_ATTEMPTS": Var("3", "Failed writes of a batch (database up) before its bad records are isolated."),
    "PENDING_GRACE_SECONDS": Var("10", "A record unhandled this long, with nothing queued or in flight, is re-queued."),
    "DEAD_LETTER_KEY": Var("dead_letters", "Redis list holding messages the database keeps rejecting."),
    "RETENTION_DAYS": Var("0", "Messages persisted longer ago than this many days are removed (0: kept forever)."),
    "RETENTION_INTERVAL_SECONDS": Var("60", "How often one worker instance looks for expired messages to remove."),
    "RETENTION_BATCH_SIZE": Var("1000", "Most expired messages removed in one transaction."),
    "WORKER_METRICS_PORT": Var("0", "Port of the worker's Prometheus `/metrics` endpoint (0: off)."),
    "PROMETHEUS_MULTIPROC_DIR": Var(
        "", "Empty directory per service where prometheus-client aggregates the metrics of its processes."
    ),
    "LIVE_STREAM_KEY": Var("messages:live", "Redis Stream that carries messages to the websocket servers."),
    "LIVE_WINDOW": Var("10000", "Approximate number of recent messages kept in the live stream for resume."),
    "WS_MAX_BUFFER_BYTES": Var(
        "1048576", "Unsent bytes a websocket client may fall behind before the slow-client policy acts."
    ),
    "WS_SLOW_CLIENT_POLICY": Var(
        "disconnect",
        "`disconnect`: a slow client gets a backlog at its own pace and is closed past the window; "
        "`drop`: it misses frames.",
    ),
    "WS_COMPRESSION": Var("off", "`off` or `deflate` (permessage-deflate costs ~40% of fan-out throughput)."),
    "WS_MAX_CLIENT_FRAME_BYTES": Var("4096", "Largest frame a client may send; bigger closes the connection (1009)."),
    "WS_PING_INTERVAL": Var("20", "Seconds between keepalive pings; a client that misses one is dropped."),
    "WS_WINDOW_MAX_BYTES": Var("67108864", "Memory cap of a websocket server's replay window, in bytes."),
    "API_TOKENS": Var("", "Comma-separated bearer tokens; when set, POST, listing and websockets need one."),
    "RATE_LIMIT": Var(
        "",
        "Messages one client (its token, else its address) may publish per period over both POST endpoints, "
        "e.g. `100/second`; a failed token check costs one (empty: off).",
    ),
    "PROXY_COUNT": Var("0", "Reverse proxies in front of the APIs whose X-Forwarded-For to trust (client address)."),
    "LOG_FORMAT": Var("json", "`json` (one object per line, with message ids) or `text`."),
    "LOG_LEVEL": Var("INFO", "Python logging level of every service."),
    "CORS_ORIGINS": Var("*", "Origins allowed to POST to the ingestion API from a browser (comma-separated)."),
}


def _int(raw: str, name: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _float(raw: str, name: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    """Typed view of ``ENV_VARS``; field names are the lower-cased variable names."""

    app_env: str
    sqlalchemy_database_uri: str
    redis_url: str
    redis_timeout_seconds: float
    ingestion_api_port: int
    list_api_port: int
    ws_port: int
    bind_host: str
    list_api_url: str
    ingestion_api_url: str
    ws_url: str
    secret_key: str
    max_message_bytes: int
    max_batch_messages: int
    max_batch_bytes: int
    ingest_group_commit: int
    idempotency_ttl_seconds: int
    persist_queue: str
    celery_visibility_timeout: int
    persist_batch_size: int
    persist_message_max_bytes: int
    worker_prefetch_bytes: int
    persist_flush_seconds: float
    persist_attempts: int
    pending_grace_seconds: float
    dead_letter_key: str
    retention_days: float
    retention_interval_seconds: float
    retention_batch_size: int
    worker_metrics_port: int
    prometheus_multiproc_dir: str
    live_stream_key: str
    live_window: int
    ws_max_buffer_bytes: int
    ws_slow_client_policy: str
    ws_compression: str
    ws_max_client_frame_bytes: int
    ws_ping_interval: float
    ws_window_max_bytes: int
    api_tokens: tuple[str, ...]
    rate_limit: str
    proxy_count: int
    log_format: str
    log_level: str
    cors_origins: tuple[str, ...]

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"


def local_stack_env(path: Path = LOCAL_STACK_FILE) -> dict[str, str]:
    """Return the variables ``scripts/run.sh`` wrote for the stack it is running, or ``{}`` when none runs.

    run.sh holds an exclusive ``flock`` on the file for as long as its honcho
    runs, and the kernel drops it however honcho ends: a file nobody has
    locked belongs to a stopped stack and is ignored, with no pid to reuse.
    """
    try:
        file = path.open()
    except FileNotFoundError:
        return {}
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # locked: the stack is running
            lines = [line.partition("=") for line in file.read().splitlines() if line and not line.startswith("#")]
            return {name: "".join(shlex.split(value)) for name, _, value in lines}
        return {}


def uses_local_stack(environ: Mapping[str, str]) -> bool:
    """Say whether a process with ``environ`` takes its unset settings from the running local stack.

    Not in production, and never under pytest (``PYTEST_CURRENT_TEST``, which
    pytest sets for each test and the services a test starts inherit): the
    suite runs from this checkout, perhaps beside a developer's stack, and
    must not find it.
    """
    return environ.get("APP_ENV") != "production" and "PYTEST_CURRENT_TEST" not in environ


def setting_origin(name: str) -> str:
    """Say where ``load_settings()`` takes ``name`` from, for the one-line errors of the scripts."""
    if name in os.environ:
        return f"{name} from the environment"
    if uses_local_stack(os.environ) and name in local_stack_env():
        return f"{name} of the stack scripts/run.sh is running ({LOCAL_STACK_FILE.name})"
    return f"{name} unset: its default, as no scripts/run.sh stack is running here"


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build settings from ``environ`` (default ``os.environ``), then apply ``overrides``.

    With the process environment (no ``environ``), a variable it does not set
    comes from the stack ``scripts/run.sh`` is running from this checkout, if
    any (:func:`local_stack_env`), so that ``celery -A tasks inspect ping`` and
    the scripts find it. Raises ``ValueError`` naming the variable when a
    value is malformed, or, in production, when a required variable is unset
    or a placeholder.
    """
    env = os.environ if environ is None else environ
    if environ is None and uses_local_stack(env):
        env = {**local_stack_env(), **env}
    raw = {name: env.get(name, var.default) for name, var in ENV_VARS.items()}
    # A default may name another setting (`${WS_PORT}`): the public URLs follow the ports unless set.
    raw = {name: text if name in env else string.Template(text).safe_substitute(raw) for name, text in raw.items()}
    if raw["APP_ENV"] not in ("development", "production"):
        raise ValueError(f"APP_ENV must be 'development' or 'production', got {raw['APP_ENV']!r}")
    if raw["APP_ENV"] == "production":
        missing = [n for n, v in ENV_VARS.items() if v.required_in_production and not env.get(n)]
        if missing:
            raise ValueError(f"required settings are unset: {', '.join(missing)}")
        if raw["SECRET_KEY"] == DEV_SECRET:
            raise ValueError("SECRET_KEY still has the development placeholder")
    choices = {"WS_SLOW_CLIENT_POLICY": ("disconnect", "drop"), "WS_COMPRESSION": ("off", "deflate"),
               "LOG_FORMAT": ("json", "text")}  # fmt: skip
    for name, allowed in choices.items():
        if raw[name] not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {raw[name]!r}")
    types = {f.name: f.type for f in fields(Settings)}
    values: dict[str, object] = {}
    for name, text in raw.items():
        key = name.lower()
        kind = types[key]
        if kind == "int":
            values[key] = _int(text, name)
        elif kind == "float":
            values[key] = _float(text, name)
        elif kind == "tuple[str, ...]":
            values[key] = tuple(part.strip() for part in text.split(",") if part.strip())
        else:
            values[key] = text
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]
