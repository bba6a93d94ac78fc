"""Websocket server: fans messages out from the Redis live stream to browsers.

Run: ``python wsserver.py``. Reads ``REDIS_URL``, ``LIVE_STREAM_KEY``,
``LIVE_WINDOW``, ``BIND_HOST``, ``WS_PORT`` and the other ``WS_*`` settings
through ``relay/settings.py``. Several processes can run side by side: each reads
the whole stream with its own single Redis connection (Redis never sees the
browsers) and delivers every message to its own clients.

Protocol. Connect to ``ws://host:8765/`` for every channel, or to
``/?channel=a&channel=b`` for only those channels (a malformed name is
refused with 400 ``bad_channel``). Add ``after=<position>`` (a message's
``position``, of any channel: the last one listed or received) to resume:
the server first sends every message of the selection after that position
still in its window, in stream order, then goes live with no gap and no
duplicate at the seam (``relay/live/window.py`` says when the window covers
a position). A client ahead of this server (it listed what the server has
not read yet) gets no replay, and the frames at or below its position are
skipped as they arrive. A resume asked before the server has read the
stream once waits for that read. Text frames from the server:

* a message: ``{"id", "channel", "received_at", "payload", "offset", "position"}``
  (as in the list API);
* ``{"type": "ready"}``: any replay is done, what follows is live;
* ``{"type": "reset", "reason": ..., "oldest": <position or null>}``: the
  window does not cover ``after``, or ``after`` is no position (a message
  id from a client of the previous release; reason ``unknown_or_expired_id``,
  before ``ready``; ``oldest`` is the oldest position the server can
  replay); backfill from the list API. It also comes mid-stream, reason
  ``server_fell_behind``, when the server itself fell further behind than
  the live stream's cap (it was stopped, say) and entries were trimmed
  before it read them (``relay/live/stream.py``): the messages between the
  last one sent and ``oldest`` (the position of the next one sent) were
  missed; backfill them from the list API. Messages from ``oldest`` on
  follow with no gap; earlier positions no longer resume.

Clients send nothing: a data frame closes the connection (1003), one larger
than ``WS_MAX_CLIENT_FRAME_BYTES`` closes it (1009). A client that falls
more than ``WS_MAX_BUFFER_BYTES`` behind is switched to a backlog sent at
its own pace (frames shared with the window, so it costs references, not
copies); if it falls further behind than the replay window it is
disconnected (1013; it resumes or resets). With
``WS_SLOW_CLIENT_POLICY=drop`` such a client instead misses frames until it
drains (counted). Either way slow clients never hold back the others and
memory stays bounded.
``GET /healthz`` on the same port answers 200 when Redis does,
``GET /metrics`` serves Prometheus metrics, and ``GET /asyncapi.json`` this
protocol as an AsyncAPI 3.0 document (``relay/live/asyncapi.py``).

Access (``relay/auth``, ``relay/live/access.py``). When ``API_TOKENS`` or a
``JWT_*`` key is set, the handshake needs a token (``?token=`` or
``Authorization: Bearer``) allowing ``subscribe`` on each selected channel,
or on ``*`` without ``?channel=``. Without a valid one it is refused with
401 (``unauthorized`` or ``token_expired``), with 429 (``Retry-After``) once
the address is over ``AUTH_FAILURE_LIMIT``, a budget it shares with both
APIs (``relay/web/ratelimit.py``); a valid token without the capability
gets 403 ``forbidden``. Refusals carry ``Access-Control-Allow-Origin: *``
so a page can ask why its socket was refused (browsers hide the status).
An open connection whose token expires is closed with 4401 at ``exp``:
reconnect with a fresh token and ``after`` to lose nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

import orjson
import redis.asyncio as aioredis
import uvloop
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from relay.auth import Authenticator, Forbidden, Unauthorized, challenge
from relay.live import asyncapi
from relay.live.access import BadChannel, LiveConnection, seconds_left, subscription
from relay.live.protocol import (
    BAD_CHANNEL,
    NOT_ACCEPTED,
    READY,
    RESET,
    SERVER_FELL_BEHIND,
    TOKEN_EXPIRED,
    TOO_SLOW,
    UNKNOWN_OR_EXPIRED_ID,
)
from relay.live.stream import START, read_after, valid
from relay.live.window import Backlog, Entry, Reset, Selection, Window, passes, selected
from relay.logs import configure_logging
from relay.settings import Settings, load_settings
from relay.web.ratelimit import (
    TOO_MANY_FAILURES,
    RateLimit,
    client_for_failed_auth,
    failed_auth_limit,
    forwarded_address,
)

log = logging.getLogger("wsserver")
READY_FRAME = orjson.dumps({"type": READY})
READ_BATCH = 100  # stream entries per XREAD: bounds the burst written to a client at once


@dataclass
class Stats:
    """Counters the server keeps (exported at ``/metrics``)."""

    delivered: int = 0
    dropped: int = 0
    slow_disconnects: int = 0
    replayed: int = 0
    gaps: int = 0


class Hub:
    """Who is connected, what each still needs, and the fan-out itself.

    A client is either *live* (frames are written to it as they arrive, with
    ``broadcast``, never awaiting it) or *catching up* (it has a backlog that
    a task of its own sends with flow control, then it turns live again).
    Each client has a *selection* of channels (None: all) and only ever gets
    frames of those channels; one that is ahead of this server has a
    *floor*, a position at or below which it gets nothing, until the stream
    passes it.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.window = Window(settings.live_window, settings.ws_window_max_bytes)
        self.live: set[ServerConnection] = set()
        self.catching_up: dict[ServerConnection, Backlog] = {}
        self.selection: dict[ServerConnection, Selection] = {}
        self.floors: dict[ServerConnection, int] = {}
        # Resumes asked before the window was primed from the stream: answered by prime().
        self.waiting: dict[ServerConnection, int | None] = {}
        self.primed = False
        self.stats = Stats()
        self._tasks: set[asyncio.Task] = set()

    def _spawn(self, coroutine: Coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _buffered(self, connection: ServerConnection) -> int:
        transport = connection.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def prime(self, entries: Iterable[Entry]) -> None:
        """Fill the window with the stream's recent entries (sending none), then answer the resumes waiting for it."""
        for entry in entries:
            self.window.append(entry)
        self.primed = True
        waiting, self.waiting = self.waiting, {}
        for connection, after in waiting.items():
            self._resume(connection, after)

    def deliver(self, entries: list[Entry]) -> None:
        """Remember new entries and pass each client the frames of its channels; never waits on a client."""
        if not entries:
            return
        for entry in entries:
            self.window.append(entry)
        # Clients with the same selection (and floor) get the same frames: filter once per distinct pair.
        chosen: dict[tuple[Selection, int | None], list[bytes]] = {}

        def wants(connection: ServerConnection) -> tuple[Selection, int | None]:
            return self.selection.get(connection), self.floors.get(connection)

        def of(connection: ServerConnection) -> list[bytes]:
            key = wants(connection)
            if key not in chosen:
                selection, floor = key
                chosen[key] = [e.frame for e in entries if selected(selection, e.channel) and passes(e, floor)]
            return chosen[key]

        # A client still holding more than the limit from earlier writes is not keeping up.
        behind = [c for c in self.live if self._buffered(c) > self.settings.ws_max_buffer_bytes]
        if self.settings.ws_slow_client_policy == "drop":
            targets = self.live.difference(behind)
            self.stats.dropped += sum(len(of(c)) for c in behind)
        else:
            for connection in behind:
                self.live.discard(connection)
                self._start_catch_up(connection, Backlog(), announce=False)
            targets = self.live
        for connection, backlog in list(self.catching_up.items()):
            backlog.extend(of(connection))
            if len(backlog.frames) > self.window.max_items or backlog.bytes > self.window.max_bytes:
                self.evict(connection)
        by_selection: dict[tuple[Selection, int | None], list[ServerConnection]] = {}
        for connection in targets:
            by_selection.setdefault(wants(connection), []).append(connection)
        for group in by_selection.values():
            mine = of(group[0])
            if mine:
                self._write(group, mine)
                self.stats.delivered += len(group) * len(mine)
        self._drop_passed_floors(entries)

    def _drop_passed_floors(self, entries: list[Entry]) -> None:
        """Forget the floors the stream has passed: stream order is position order, so all that follows is above."""
        newest = max((entry.position for entry in entries if entry.position is not None), default=None)
        if newest is None:
            return
        for connection in [c for c, floor in self.floors.items() if newest > floor]:
            del self.floors[connection]

    @staticmethod
    def _write(targets: Iterable[ServerConnection], frames: list[bytes]) -> None:
        """Write ``frames`` to every target without awaiting any of them.

        Server frames are unmasked, so without compression they are the same
        bytes for every client: serialize the batch once and hand each
        client one joined write (one syscall per client per batch, where
        ``broadcast`` re-encodes and writes per client per frame). Clients
        that negotiated compression go through ``broadcast``.
        """
        compressed = []
        wire = b"".join(Frame(Opcode.TEXT, frame).serialize(mask=False) for frame in frames)
        for connection in targets:
            if connection.protocol.extensions:
                compressed.append(connection)
            elif connection.protocol.state is State.OPEN and connection.transport is not None:
                connection.transport.write(wire)
        for frame in frames:
            broadcast(compressed, frame, text=True)

    def evict(self, connection: ServerConnection) -> None:
        """Drop a client that fell further behind than the replay window, closing it (1013)."""
        self.live.discard(connection)
        self.catching_up.pop(connection, None)
        self.selection.pop(connection, None)
        self.floors.pop(connection, None)
        self.stats.slow_disconnects += 1
        log.warning("disconnecting slow client %s", connection.remote_address)
        self._spawn(connection.close(TOO_SLOW, "client too slow"))

    def fell_behind(self, oldest: int | None) -> None:
        """Tell every client that messages before position ``oldest`` were missed (``reset``), in order with its frames.

        The window is forgotten: a client resuming from a position before the
        gap would otherwise be replayed across it without a word.
        """
        self.stats.gaps += 1
        self.window.clear()
        log.warning("live stream entries were trimmed before this server read them; sending reset, oldest %s", oldest)
        frame = orjson.dumps({"type": RESET, "reason": SERVER_FELL_BEHIND, "oldest": oldest})
        for backlog in self.catching_up.values():
            backlog.extend([frame])
        self._write(self.live, [frame])

    def join(
        self, connection: ServerConnection, selection: Selection = None, resume: bool = False, after: int | None = None
    ) -> None:
        """Register a client; when it resumes, queue its replay (synchronously, so nothing slips between).

        ``after`` is the position it resumes after; None with ``resume``: an
        ``after`` that is no position, answered with ``reset``.
        """
        if selection is not None:
            self.selection[connection] = selection
        if not resume:
            self._go_live(connection)
        elif not self.primed:
            self.waiting[connection] = after  # before the first read, the window could only answer reset
        else:
            self._resume(connection, after)

    def _resume(self, connection: ServerConnection, after: int | None) -> None:
        outcome = self.window.resume(after, self.selection.get(connection))
        if isinstance(outcome, Reset):
            reset = {"type": RESET, "reason": UNKNOWN_OR_EXPIRED_ID, "oldest": outcome.oldest}
            broadcast([connection], orjson.dumps(reset), text=True)
            self._go_live(connection)
            return
        if outcome.floor is not None:
            self.floors[connection] = outcome.floor
        self.stats.replayed += len(outcome.frames)
        self._start_catch_up(connection, Backlog(outcome.frames), announce=True)

    def _go_live(self, connection: ServerConnection) -> None:
        broadcast([connection], READY_FRAME, text=True)
        self.live.add(connection)

    def _start_catch_up(self, connection: ServerConnection, backlog: Backlog, announce: bool) -> None:
        self.catching_up[connection] = backlog
        self._spawn(self._catch_up(connection, backlog, announce))

    async def _catch_up(self, connection: ServerConnection, backlog: Backlog, announce: bool) -> None:
        """Send a backlog with flow control, then switch the client to live with no await between."""
        try:
            while backlog.frames:
                await connection.send(backlog.popleft(), text=True)
                if self.catching_up.get(connection) is not backlog:
                    return
        except ConnectionClosed:
            return
        del self.catching_up[connection]
        if announce:
            broadcast([connection], READY_FRAME, text=True)
        self.live.add(connection)

    def leave(self, connection: ServerConnection) -> None:
        self.live.discard(connection)
        self.catching_up.pop(connection, None)
        self.selection.pop(connection, None)
        self.floors.pop(connection, None)
        self.waiting.pop(connection, None)


class HubCollector(Collector):
    """Exports the hub's counters and connection count when ``/metrics`` is scraped."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterable[Metric]:
        stats = self.hub.stats
        yield GaugeMetricFamily(
            "ws_connections",
            "Connected websocket clients.",
            value=len(self.hub.live) + len(self.hub.catching_up) + len(self.hub.waiting),
        )
        yield GaugeMetricFamily("ws_catching_up", "Clients being sent a backlog.", value=len(self.hub.catching_up))
        yield CounterMetricFamily("ws_frames_delivered", "Message frames written to clients.", value=stats.delivered)
        yield CounterMetricFamily(
            "ws_frames_dropped", "Frames skipped for slow clients (drop policy).", value=stats.dropped
        )
        yield CounterMetricFamily("ws_frames_replayed", "Frames replayed to resuming clients.", value=stats.replayed)
        yield CounterMetricFamily(
            "ws_slow_disconnects", "Clients closed for falling behind.", value=stats.slow_disconnects
        )
        yield CounterMetricFamily(
            "ws_stream_gaps", "Times live stream entries were trimmed before this server read them.", value=stats.gaps
        )


async def handler(hub: Hub, connection: LiveConnection) -> None:
    """Serve one browser: join (replaying if resuming), then wait until it leaves or its token expires (4401)."""
    joined = connection.subscription  # set by process_request: a handler never runs without it
    hub.join(connection, joined.selection, joined.resume, joined.after)
    try:
        async with asyncio.timeout(seconds_left(joined.grant)):
            async for _ in connection:
                await connection.close(NOT_ACCEPTED, "this server does not accept messages")
    except TimeoutError:
        hub.leave(connection)  # nothing more is sent once the token has run out
        await connection.close(TOKEN_EXPIRED, "token expired")
    except ConnectionClosed:
        pass
    finally:
        hub.leave(connection)


async def relay(hub: Hub, client: aioredis.Redis, stream: str) -> None:
    """The one Redis reader: prime the window (sending nothing), then pass each new stream entry and gap to the hub."""
    last: str | None = None
    caught_up = False
    backoff = 0.1
    while True:
        try:
            if last is None:
                recent = await client.xrevrange(stream, count=hub.window.max_items)
                hub.prime(valid(reversed(recent)))
                last = recent[0][0].decode() if recent else START
            elif caught_up:
                # Only wait here: what comes is read below, where a gap shows (a blocking read alone would hide it).
                await client.xread({stream: last}, count=1, block=1000)
            batch = await read_after(client, stream, last, READ_BATCH)
            backoff = 0.1
        except (RedisError, OSError) as exc:
            log.warning("reading the live stream failed (%s); retrying in %.1fs", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
            continue
        if batch.gap:
            hub.fell_behind(batch.entries[0].position if batch.entries else None)
        hub.deliver(batch.entries)
        last, caught_up = batch.last, batch.size < READ_BATCH


async def process_request(
    client: aioredis.Redis,
    settings: Settings,
    authenticator: Authenticator,
    failures: RateLimit | None,
    hub_registry: CollectorRegistry,
    connection: LiveConnection,
    request: Request,
) -> Response | None:
    """Answer ``/healthz``, ``/metrics``, ``/asyncapi.json`` over HTTP; accept a handshake only as its token allows."""
    url = urlsplit(request.path)
    if url.path == "/healthz":
        return await _health(client, connection)
    if url.path == "/metrics":
        # prometheus-client's own choice of format (OpenMetrics when asked); relay/metrics.py is Flask's, not used here.
        encode, content_type = choose_encoder(request.headers.get("Accept") or "")
        response = connection.respond(HTTPStatus.OK, encode(hub_registry).decode())
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = content_type
        return response
    if url.path == "/asyncapi.json":
        response = _json_response(connection, HTTPStatus.OK, asyncapi.document(settings))
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response
    try:
        connection.subscription = subscription(authenticator, request)
    except Unauthorized as refused:
        return await _refused_token(connection, request, failures, settings.proxy_count, refused)
    except Forbidden as refused:  # a valid token, not for this channel
        return _refusal(connection, HTTPStatus.FORBIDDEN, {"error": refused.code, "message": refused.message})
    except BadChannel as refused:
        return _refusal(connection, HTTPStatus.BAD_REQUEST, {"error": BAD_CHANNEL, "message": str(refused)})
    return None


async def _refused_token(
    connection: ServerConnection,
    request: Request,
    failures: RateLimit | None,
    proxy_count: int,
    refused: Unauthorized,
) -> Response:
    """401, or 429 with ``Retry-After`` once the address is over ``AUTH_FAILURE_LIMIT``, as the APIs answer."""
    verdict = None
    if failures is not None:
        remote = connection.remote_address[0] if connection.remote_address else None
        address = forwarded_address(remote, request.headers.get("X-Forwarded-For"), proxy_count)
        # The limits package is synchronous (redis-py): charge in a thread, off the loop every client shares.
        verdict = await asyncio.to_thread(failures.charge, client_for_failed_auth(address))
    if verdict is not None and not verdict.allowed:
        body = {"error": "too_many_requests", "message": TOO_MANY_FAILURES}
        response = _refusal(connection, HTTPStatus.TOO_MANY_REQUESTS, body)
        response.headers["Retry-After"] = str(verdict.retry_after)
        return response
    response = _refusal(connection, HTTPStatus.UNAUTHORIZED, {"error": refused.code, "message": refused.message})
    response.headers["WWW-Authenticate"] = challenge(refused)  # as the APIs challenge
    return response


def _refusal(connection: ServerConnection, status: HTTPStatus, body: dict) -> Response:
    """A refused handshake's JSON, readable cross-origin: a page's ``fetch`` of its socket URL learns why."""
    response = _json_response(connection, status, body)
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


async def _health(client: aioredis.Redis, connection: ServerConnection) -> Response:
    try:
        ok = bool(await asyncio.wait_for(client.ping(), 1.0))
    except (RedisError, OSError, TimeoutError):
        ok = False
    if ok:
        return _json_response(connection, HTTPStatus.OK, {"status": "ok"})
    body = {"error": "redis_unavailable", "message": "Redis does not answer."}
    return _json_response(connection, HTTPStatus.SERVICE_UNAVAILABLE, body)


def _json_response(connection: ServerConnection, status: HTTPStatus, body: dict) -> Response:
    response = connection.respond(status, orjson.dumps(body).decode())
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


async def run(settings: Settings, stop: asyncio.Future) -> None:
    """Serve until ``stop`` resolves, then close every connection gracefully (1001)."""
    client = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=5)
    authenticator = Authenticator.from_settings(settings)  # before the reader: a bad JWT_PUBLIC_KEY fails at start
    hub = Hub(settings)
    hub_registry = CollectorRegistry()
    hub_registry.register(HubCollector(hub))
    ProcessCollector(registry=hub_registry)  # one process: process_* describes the whole server
    reader = asyncio.create_task(relay(hub, client, settings.live_stream_key))
    async with serve(
        functools.partial(handler, hub),
        settings.bind_host,
        settings.ws_port,
        process_request=functools.partial(
            process_request,
            client,
            settings,
            authenticator,
            failed_auth_limit(settings, authenticator.required),
            hub_registry,
        ),
        create_connection=LiveConnection,
        compression="deflate" if settings.ws_compression == "deflate" else None,
        max_size=settings.ws_max_client_frame_bytes,
        ping_interval=settings.ws_ping_interval,
        ping_timeout=settings.ws_ping_interval,
        close_timeout=2,
    ):
        log.info("listening on ws://%s:%d/", settings.bind_host, settings.ws_port)
        await stop
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    await client.aclose()


def main() -> None:
    settings = load_settings()
    configure_logging("wsserver", settings.log_format, settings.log_level)

    async def serve_until_signalled() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        await run(settings, stop)

    uvloop.run(serve_until_signalled())  # libuv's event loop: less CPU per write than asyncio's


if __name__ == "__main__":
    main()
