"""Settings for every service, read from the environment in one place.

Each service calls :func:`load_settings` once (in its app factory or
``main()``) and passes the resulting :class:`Settings` around; nothing else
reads ``os.environ``. Each setting is declared once, as a field of
:class:`Settings` with its type, default, meaning and checks; ``ENV_VARS``
and the configuration table (the docs', and ``python -m relay.settings``'s) derive
from it.

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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

PROJECT_DIR = Path(__file__).resolve().parent.parent  # the checkout: index.html, migrations/, var/
MIN_JWT_SECRET_BYTES = 32  # an HS256 key as long as its hash, as RFC 7518 (3.2) requires
DEV_SECRET = "dev-only-insecure-secret"  # noqa: S105 (placeholder; production refuses it)
# Written by scripts/run.sh (scripts/local_stack.py): the settings of the stack it runs from this checkout.
LOCAL_STACK_FILE = PROJECT_DIR / "var" / "local-stack.env"


@dataclass(frozen=True)
class Var:
    """One environment variable: its default (as the variable would spell it), meaning and checks."""

    default: str
    help: str
    required_in_production: bool = False
    choices: tuple[str, ...] = ()


def setting(default: str, help: str, required_in_production: bool = False, choices: tuple[str, ...] = ()) -> Any:
    """Declare a :class:`Settings` field: its variable's default, meaning and checks, in one place."""
    return field(metadata={"var": Var(default, help, required_in_production, choices)})


@dataclass(frozen=True)
class Settings:
    """Every setting: its type, its variable's default and meaning, and whether production needs it.

    This class is the only declaration. A field's variable is its name in
    upper case; :data:`ENV_VARS`, the docs' table (``scripts/settings_table.py``)
    and ``python -m relay.settings`` derive from it.
    """

    app_env: str = setting(
        "development",
        "`development` or `production` (production fails fast on missing settings).",
        choices=("development", "production"),
    )
    sqlalchemy_database_uri: str = setting(
        f"sqlite:///{PROJECT_DIR / 'var' / 'messages.db'}",
        "Database URL (SQLite file locally, `mysql+pymysql://...` for MySQL/MariaDB).",
        required_in_production=True,
    )
    redis_url: str = setting(
        "redis://127.0.0.1:6379/0", "Redis for the task queue, the live stream and idempotency keys.", True
    )
    redis_timeout_seconds: float = setting(
        "0.5", "Connect/read timeout on the request path; Redis down means 503 within ~1 s."
    )
    redis_memory_high_water: float = setting(
        "0.8",
        "Share of Redis' `maxmemory` at which the ingestion API stops accepting (`503 queue_full`), so the "
        "workers' own writes (a bookkeeping copy of each task message they hold, up to "
        "`WORKER_PREFETCH_BYTES` per pool process; re-sends; locks) always fit and they can drain it "
        "(1: up to `maxmemory`).",
    )
    ingestion_api_port: int = setting("5000", "Port of the ingestion API (`POST /dummy`).")
    list_api_port: int = setting("5001", "Port of the list API (`GET /messages`, the live page at `/`).")
    ws_port: int = setting("8765", "Port of the websocket server.")
    bind_host: str = setting(
        "127.0.0.1",
        "Address the services bind: the APIs, the websocket server, the worker's metrics (`0.0.0.0` in containers).",
    )
    list_api_url: str = setting(
        "http://127.0.0.1:${LIST_API_PORT}",
        "Public base URL of the list API, used in `Location` and `Link` headers and by the live page.",
        True,
    )
    ingestion_api_url: str = setting(
        "http://127.0.0.1:${INGESTION_API_PORT}",
        "Public base URL of the ingestion API; the live page posts there.",
        True,
    )
    ws_url: str = setting(
        "ws://127.0.0.1:${WS_PORT}", "Public URL of the websocket server; the live page connects there.", True
    )
    list_database_timeout_seconds: float = setting(
        "3",
        "Connect and read timeout of the list API's database calls, and its wait for a pooled connection: "
        "a hung database answers `503 database_unavailable` within about this long (0: wait as long as it takes).",
    )
    secret_key: str = setting(DEV_SECRET, "Signs pagination cursors (tamper-evident). Must be set in production.", True)
    max_message_bytes: int = setting(
        "65536", "Largest message in bytes: a `POST /dummy` body, and any message stored (413)."
    )
    max_batch_messages: int = setting("1000", "Most messages in one `POST /dummy/batch`.")
    max_batch_bytes: int = setting("8388608", "Largest accepted `POST /dummy/batch` body, in bytes (413 above).")
    ingest_group_commit: int = setting(
        "1", "1: concurrent requests of a process share one queue write (gunicorn's gevent or gthread workers)."
    )
    ingest_send_gather_seconds: float = setting(
        "0.1",
        "Longest an API process gathers accepted records into one task message while others are still being "
        "stored (the longer the more are in flight, up to this; with nothing in flight they are sent at once): larger "
        "tasks under load, at most that much later to storage (live delivery does not wait; 0: each write's "
        "sent before its 202).",
    )
    idempotency_ttl_seconds: int = setting("86400", "How long an `Idempotency-Key` is remembered.")
    persist_queue: str = setting("persist", "Celery queue (Redis list) holding persistence tasks.")
    celery_visibility_timeout: int = setting(
        "120", "Seconds before an unacknowledged task of a dead worker is redelivered."
    )
    persist_batch_size: int = setting("1000", "Most messages the worker writes in one transaction.")
    persist_message_max_bytes: int = setting(
        "65536", "Most bytes of records in one task message; a larger write is split over several (atomically)."
    )
    worker_prefetch_bytes: int = setting(
        "16777216", "Task-message bytes a worker pool process may hold prefetched (bounds worker memory)."
    )
    persist_attempts: int = setting("3", "Failed writes of a batch (database up) before its bad records are isolated.")
    pending_grace_seconds: float = setting(
        "10", "A record no worker has touched for this long, while the queue is empty, is sent again."
    )
    dead_letter_key: str = setting("dead_letters", "Redis list holding messages the database keeps rejecting.")
    retention_days: float = setting(
        "0", "Messages persisted longer ago than this many days are removed (0: kept forever)."
    )
    retention_interval_seconds: float = setting(
        "60", "How often one worker instance looks for expired messages to remove."
    )
    retention_batch_size: int = setting("1000", "Most expired messages removed in one transaction.")
    worker_metrics_port: int = setting("0", "Port of the worker's Prometheus `/metrics` endpoint (0: off).")
    prometheus_multiproc_dir: str = setting(
        "", "Empty directory per service where prometheus-client aggregates the metrics of its processes."
    )
    live_stream_key: str = setting("messages:live", "Redis Stream that carries messages to the websocket servers.")
    live_window: int = setting("10000", "Approximate number of recent messages kept in the live stream for resume.")
    ws_max_buffer_bytes: int = setting(
        "1048576", "Unsent bytes a websocket client may fall behind before the slow-client policy acts."
    )
    ws_slow_client_policy: str = setting(
        "disconnect",
        "`disconnect`: a slow client gets a backlog at its own pace and is closed past the window; "
        "`drop`: it misses frames.",
        choices=("disconnect", "drop"),
    )
    ws_compression: str = setting(
        "off", "`off` or `deflate` (permessage-deflate costs ~40% of fan-out throughput).", choices=("off", "deflate")
    )
    ws_max_client_frame_bytes: int = setting(
        "4096", "Largest frame a client may send; bigger closes the connection (1009)."
    )
    ws_ping_interval: float = setting("20", "Seconds between keepalive pings; a client that misses one is dropped.")
    ws_window_max_bytes: int = setting("67108864", "Memory cap of a websocket server's replay window, in bytes.")
    api_tokens: tuple[str, ...] = setting(
        "",
        "Comma-separated static bearer tokens, each allowed everything (for services); with these or a JWT key "
        "set, publishing, listing and websockets need a token.",
    )
    jwt_secret: str = setting(
        "",
        "Shared secret that accepts signed tokens (JWT, HS256) with per-channel capabilities, at least 32 bytes "
        "in production (empty: off).",
    )
    jwt_public_key: str = setting(
        "",
        "PEM public key that accepts signed tokens (JWT) made with its private key: RS256 for RSA, ES256 for EC "
        "(empty: off).",
    )
    jwt_audience: str = setting("", "When set, a signed token's `aud` must name it.")
    jwt_issuer: str = setting("", "When set, a signed token's `iss` must be it.")
    rate_limit: str = setting(
        "",
        "Messages one client (its token, else its address) may publish per period over both POST endpoints, "
        "e.g. `100/second` (empty: off).",
    )
    auth_failure_limit: str = setting(
        "20/minute",
        "Failed token checks one client address may make per period, over every service together (both "
        "APIs and the websocket handshake); past it they are answered 429 (empty: off). Needs no `RATE_LIMIT`.",
    )
    request_body_timeout_seconds: float = setting(
        "10",
        "Seconds a request body may take to arrive after its head, plus one per 64 KiB received; a body "
        "still incomplete then is answered 408 and its connection closed.",
    )
    proxy_count: int = setting(
        "0", "Reverse proxies in front of the APIs whose X-Forwarded-For to trust (client address)."
    )
    web_workers: int = setting("3", "gunicorn worker processes per API (`python -m relay.serve`).")
    forwarded_allow_ips: str = setting(
        "127.0.0.1,::1",
        "Addresses gunicorn trusts for `X-Forwarded-*` headers (`*` behind the compose stack's nginx).",
    )
    worker_concurrency: int = setting("2", "Celery pool processes per worker instance (`python -m relay.serve`).")
    worker_hostname: str = setting("celery@%h", "Celery node name of a worker instance (`%h`: the host name).")
    log_format: str = setting(
        "json", "`json` (one object per line, with message ids) or `text`.", choices=("json", "text")
    )
    log_level: str = setting("INFO", "Python logging level of every service.")
    cors_origins: tuple[str, ...] = setting(
        "*", "Origins allowed to POST to the ingestion API from a browser (comma-separated)."
    )

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def metrics_multiprocess(self) -> bool:
        """prometheus-client keeps per-process files (``PROMETHEUS_MULTIPROC_DIR`` set): aggregate them."""
        return bool(self.prometheus_multiproc_dir)


# Every variable, in declaration order: derived from the fields of Settings.
ENV_VARS: dict[str, Var] = {f.name.upper(): f.metadata["var"] for f in fields(Settings)}
_TYPES: dict[str, Any] = get_type_hints(Settings)


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


def _parse(raw: str, name: str, kind: Any) -> object:
    """Turn variable ``name``'s text into its field's type (int, float, str or a comma-separated tuple)."""
    if kind is int:
        return _int(raw, name)
    if kind is float:
        return _float(raw, name)
    if kind == tuple[str, ...]:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if kind is str:
        return raw
    raise TypeError(f"{name}: no parser for {kind!r}")


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

    Not in production, and never under pytest: the suite runs from this
    checkout, perhaps beside a developer's stack, and must not find it, not
    even while it collects (a test module that builds an app at import).
    pytest sets ``PYTEST_VERSION`` for its whole session, collection included,
    and ``PYTEST_CURRENT_TEST`` for each test; the processes a test starts
    inherit both.
    """
    under_pytest = "PYTEST_VERSION" in environ or "PYTEST_CURRENT_TEST" in environ
    return environ.get("APP_ENV") != "production" and not under_pytest


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
    for name, var in ENV_VARS.items():
        if var.choices and raw[name] not in var.choices:
            raise ValueError(f"{name} must be one of {', '.join(var.choices)}, got {raw[name]!r}")
    if raw["APP_ENV"] == "production":
        missing = [n for n, v in ENV_VARS.items() if v.required_in_production and not env.get(n)]
        if missing:
            raise ValueError(f"required settings are unset: {', '.join(missing)}")
        if raw["SECRET_KEY"] == DEV_SECRET:
            raise ValueError("SECRET_KEY still has the development placeholder")
        if raw["JWT_SECRET"] and len(raw["JWT_SECRET"].encode()) < MIN_JWT_SECRET_BYTES:
            raise ValueError(f"JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes (HS256, RFC 7518 3.2)")
    values: dict[str, object] = {name.lower(): _parse(text, name, _TYPES[name.lower()]) for name, text in raw.items()}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def shown_default(var: Var) -> str:
    """A variable's default as a reader should see it (this checkout's absolute path as ``<repo>``)."""
    return var.default.replace(str(PROJECT_DIR), "<repo>")


def markdown_table() -> str:
    """Every variable as a Markdown table: name, default, required in production, meaning."""
    rows = ["| variable | default | required in production | meaning |", "|---|---|---|---|"]
    for name, var in ENV_VARS.items():
        default = f"`{shown_default(var)}`" if var.default else "(empty)"
        rows.append(f"| `{name}` | {default} | {'yes' if var.required_in_production else ''} | {var.help} |")
    return "\n".join(rows)


if __name__ == "__main__":  # `python -m relay.settings`: the settings table, as the docs show it
    print(markdown_table())
