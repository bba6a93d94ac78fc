"""The websocket server as a real process, against a real Redis.

The ``redis_url`` fixture seeds the position counters as a worker would, so
the first message published in a test is at position 1, and the producers
here write positions through the real accept script.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import psutil
import pytest
import redis
import requests
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from relay.broker.producer import Producer
from relay.records import make_record, utc_now
from tests.helpers import ROOT, Service, free_port, wait_until
from tests.stack import WsServer
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e


def _enqueue_all(redis_url: str, records: list[dict[str, str]]) -> None:
    pub = Producer(redis.Redis.from_url(redis_url), "persist", "messages:live", 10_000, 60)
    for record in records:
        pub.enqueue([record], {})


async def publish_from_another_process(pub: Producer, count: int, size: int) -> list[str]:
    """Publish from a separate process, so the test's own client is not starved of the GIL."""
    records = [make_record({"i": i, "pad": "x" * size}, utc_now()) for i in range(count)]
    url = pub.client.get_connection_kwargs()
    child = multiprocessing.get_context("fork").Process(
        target=_enqueue_all, args=(f"redis://{url['host']}:{url['port']}/{url.get('db', 0)}", records)
    )
    child.start()
    await asyncio.to_thread(child.join, 60)
    assert child.exitcode == 0
    return [r["id"] for r in records]


def publish_placed(pub: Producer, count: int, size: int = 0, channel: str = "dummy") -> list[dict]:
    """Publish ``count`` messages one by one; their records, with the offset and position each was given."""
    records = []
    for i in range(count):
        record = make_record({"i": i, "pad": "x" * size}, utc_now(), channel=channel)
        pub.enqueue([record], {})
        records.append(record)
    return records


def publish(pub: Producer, count: int, size: int = 0, channel: str = "dummy") -> list[str]:
    return [record["id"] for record in publish_placed(pub, count, size, channel)]


async def receive_until_ready(ws: ClientConnection) -> list[dict]:
    """Collect frames until the server's ready frame (the replay, and any reset)."""
    frames = []
    while True:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame.get("type") == "ready":
            return frames
        frames.append(frame)


async def receive_ids(ws: ClientConnection, count: int) -> list[str]:
    return [frame["id"] for frame in await receive_frames(ws, count)]


async def receive_positions(ws: ClientConnection, count: int) -> list[int]:
    return [frame["position"] for frame in await receive_frames(ws, count)]


async def receive_frames(ws: ClientConnection, count: int) -> list[dict]:
    frames = [orjson.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(count)]
    assert all("type" not in f for f in frames), frames
    return frames


async def nothing_arrives(ws: ClientConnection, seconds: float = 0.5) -> bool:
    """Tell whether no frame arrives within ``seconds``."""
    try:
        frame = await asyncio.wait_for(ws.recv(), seconds)
    except TimeoutError:
        return True
    print("unexpected frame:", frame)
    return False


def test_many_clients_each_receive_every_message_in_order(start_ws, publisher) -> None:
    server = start_ws()

    async def scenario() -> None:
        clients = [await connect(server.url) for _ in range(50)]
        for ws in clients:
            assert await receive_until_ready(ws) == []
        ids = await asyncio.to_thread(publish, publisher, 200)
        received = await asyncio.gather(*(receive_ids(ws, 200) for ws in clients))
        assert all(r == ids for r in received)
        frame = orjson.loads(publisher.client.xrange("messages:live", count=1)[0][1][b"frame"])
        assert set(frame) == {"id", "channel", "received_at", "payload", "offset", "position"}
        assert (frame["payload"]["i"], frame["offset"], frame["position"]) == (0, 1, 1)
        for ws in clients:
            await ws.close()

    asyncio.run(scenario())


def test_resume_from_a_position_inside_the_window_replays_exactly_the_rest_then_goes_live(start_ws, publisher) -> None:
    server = start_ws()

    async def scenario() -> None:
        async with connect(server.url) as watcher:
            await receive_until_ready(watcher)
            async with connect(server.url) as ws:
                await receive_until_ready(ws)
                first = await asyncio.to_thread(publish_placed, publisher, 10)
                assert await receive_positions(ws, 10) == [r["position"] for r in first] == list(range(1, 11))
            missed = await asyncio.to_thread(publish_placed, publisher, 15)
            # A frame reaches live clients only once the server keeps it for replay: when the watcher
            # has every missed message, all of them can be replayed (on a busy machine the server's
            # reader may otherwise still be on its way to the last one, which then comes live).
            assert await receive_ids(watcher, 25) == [r["id"] for r in first + missed]
        async with connect(f"{server.url}?after={first[-1]['position']}") as ws:
            replay = await receive_until_ready(ws)
            assert [f["id"] for f in replay] == [r["id"] for r in missed]
            assert [f["position"] for f in replay] == list(range(11, 26))
            later = await asyncio.to_thread(publish, publisher, 5)
            assert await receive_ids(ws, 5) == later
        async with connect(f"{server.url}?after=20") as ws:  # any position in the window, to the end
            assert [f["position"] for f in await receive_until_ready(ws)] == list(range(21, 31))

    asyncio.run(scenario())


def publish_mixed(pub: Producer, pattern: str) -> list[tuple[str, str, int]]:
    """Publish one message per letter of ``pattern`` to the channel named by that letter; (channel, id, position)."""
    return [
        (channel, record["id"], record["position"])
        for channel in pattern
        for record in publish_placed(pub, 1, channel=channel)
    ]


def test_each_client_receives_exactly_its_channels_in_order(start_ws, publisher) -> None:
    server = start_ws()
    selections = {"a": "?channel=a", "b": "?channel=b", "ac": "?channel=a&channel=c", "all": ""}

    async def scenario() -> None:
        clients = {name: await connect(f"{server.url}{query}") for name, query in selections.items()}
        for ws in clients.values():
            assert await receive_until_ready(ws) == []
        sent = await asyncio.to_thread(publish_mixed, publisher, "abcabcaab" * 5)
        for name, ws in clients.items():
            wanted = [(c, i) for c, i, _ in sent if name == "all" or c in name]
            frames = await receive_frames(ws, len(wanted))
            assert [(f["channel"], f["id"]) for f in frames] == wanted, name
        # Nothing else arrives: a last message on channel "a" is the next frame of the "a" client.
        [(_, last, _)] = await asyncio.to_thread(publish_mixed, publisher, "a")
        assert (await receive_frames(clients["a"], 1))[0]["id"] == last
        assert (await receive_frames(clients["b"], 0)) == []
        for ws in clients.values():
            await ws.close()

    asyncio.run(scenario())


def test_resume_within_a_selection_replays_only_its_channels_from_a_position_of_any_channel(
    start_ws, publisher
) -> None:
    server = start_ws()

    async def scenario() -> None:
        async with connect(server.url) as watcher:
            await receive_until_ready(watcher)
            sent = await asyncio.to_thread(publish_mixed, publisher, "abcab")
            await receive_frames(watcher, 5)  # every one is in the server's window now
            async with connect(f"{server.url}?channel=b&channel=c&after={sent[0][2]}") as ws:
                replay = await receive_until_ready(ws)
                assert [f["id"] for f in replay] == [i for c, i, _ in sent[1:] if c in "bc"]
                later = await asyncio.to_thread(publish_mixed, publisher, "abca")
                frames = await receive_frames(ws, 2)
                assert [f["id"] for f in frames] == [i for c, i, _ in later if c in "bc"]

    asyncio.run(scenario())


def test_an_after_that_is_no_position_gets_a_reset_naming_a_position_then_ready(start_ws, publisher) -> None:
    """A page cached before positions resumes with a message id: it is told to backfill, and goes live."""
    server = start_ws()

    async def scenario() -> None:
        async with connect(server.url) as watcher:
            await receive_until_ready(watcher)
            sent = await asyncio.to_thread(publish_placed, publisher, 3, channel="a")
            await receive_frames(watcher, 3)
        for after in (sent[1]["id"], "01a00000-0000-7000-8000-000000000000", "-1", "1.5"):
            async with connect(f"{server.url}?channel=a&after={after}") as ws:
                assert orjson.loads(await asyncio.wait_for(ws.recv(), 10)) == {
                    "type": "reset",
                    "reason": "unknown_or_expired_id",
                    "oldest": 1,  # the position of the oldest message this server can replay
                }
                assert orjson.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "ready"}
                live = await asyncio.to_thread(publish_placed, publisher, 1, channel="a")
                assert await receive_ids(ws, 1) == [live[0]["id"]]

    asyncio.run(scenario())


def test_a_malformed_channel_is_refused_at_the_handshake(start_ws) -> None:
    server = start_ws()
    for query in ("?channel=", "?channel=a%20b", "?channel=ok&channel=" + "x" * 65):
        http = server.url.replace("ws://", "http://")
        response = requests.get(
            f"{http}{query}",
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
            timeout=5,
        )
        assert response.status_code == 400, query
        assert response.json()["error"] == "bad_channel"


def test_resume_seam_has_no_gap_or_duplicate_under_load(start_ws, publisher) -> None:
    """Reconnect while messages keep flowing: replay + live must be exactly the stream."""
    server = start_ws()

    async def scenario() -> None:
        async with connect(server.url) as ws:
            await receive_until_ready(ws)
            head = await asyncio.to_thread(publish_placed, publisher, 3)
            assert await receive_ids(ws, 3) == [r["id"] for r in head]
        producer = asyncio.create_task(asyncio.to_thread(publish, publisher, 300))
        await asyncio.sleep(0.05)
        async with connect(f"{server.url}?after={head[-1]['position']}") as ws:
            frames = await receive_until_ready(ws)
            rest = await producer
            seen = [f["id"] for f in frames]
            seen += await receive_ids(ws, len(rest) - len(seen))
            assert seen == rest

    asyncio.run(scenario())


def test_resume_seam_within_a_selection_has_no_gap_or_duplicate_under_load(start_ws, publisher) -> None:
    """Reconnect to two of three channels while all three keep flowing: replay + live is exactly theirs."""
    server = start_ws()

    async def scenario() -> None:
        async with connect(server.url) as ws:
            await receive_until_ready(ws)
            head = await asyncio.to_thread(publish_mixed, publisher, "abc")
            assert [f["id"] for f in await receive_frames(ws, 3)] == [i for _, i, _ in head]
        producer = asyncio.create_task(asyncio.to_thread(publish_mixed, publisher, "abc" * 100))
        await asyncio.sleep(0.05)
        async with connect(f"{server.url}?channel=a&channel=c&after={head[-1][2]}") as ws:
            frames = await receive_until_ready(ws)
            wanted = [i for c, i, _ in await producer if c in "ac"]
            assert all(f["channel"] in "ac" for f in frames)
            seen = [f["id"] for f in frames]
            seen += [f["id"] for f in await receive_frames(ws, len(wanted) - len(seen))]
            assert seen == wanted
            # And nothing more: the next frame is a fresh message on channel a.
            [_, (_, last, _)] = await asyncio.to_thread(publish_mixed, publisher, "ba")
            assert (await receive_frames(ws, 1))[0]["id"] == last

    asyncio.run(scenario())


def test_a_position_older_than_the_window_gets_a_reset_naming_the_oldest_position_then_live(
    start_ws, publisher
) -> None:
    server = start_ws(LIVE_WINDOW="20")

    async def scenario() -> None:
        async with connect(server.url) as watcher:
            await receive_until_ready(watcher)
            old = await asyncio.to_thread(publish_placed, publisher, 50)
            # Once a live client has all 50, the server's window holds the last 20: positions 31 to 50.
            assert await receive_ids(watcher, 50) == [r["id"] for r in old]
        oldest = old[-20]["position"]
        for after in (old[0]["position"], oldest - 2):  # oldest - 1 may have been trimmed: not covered
            async with connect(f"{server.url}?after={after}") as ws:
                assert await receive_until_ready(ws) == [
                    {"type": "reset", "reason": "unknown_or_expired_id", "oldest": oldest}
                ]
                live = await asyncio.to_thread(publish, publisher, 2)
                assert await receive_ids(ws, 2) == live
            oldest += 2  # the window moved on with them
        async with connect(f"{server.url}?after={oldest - 1}") as ws:  # the window starts right after it
            replay = await receive_until_ready(ws)
            assert [f["position"] for f in replay] == list(range(oldest, oldest + 20))

    asyncio.run(scenario())


def test_a_client_ahead_of_a_lagging_server_gets_no_replay_and_no_duplicate(
    start_ws, publisher, redis_url: str
) -> None:
    """The client listed positions the server has not read yet (its Redis connection is down meanwhile).

    Nothing is replayed, and the frames at or below the client's position,
    which the server reads once Redis is back, are skipped for it: it gets
    each message once. A client behind gets its replay as usual.
    """
    redis_at = urlsplit(redis_url)
    proxy = TcpProxy(redis_at.hostname or "127.0.0.1", redis_at.port or 6379).start()
    server = start_ws(REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0")

    async def scenario() -> None:
        async with connect(server.url) as watcher:
            await receive_until_ready(watcher)
            await asyncio.to_thread(publish_placed, publisher, 3)
            assert await receive_positions(watcher, 3) == [1, 2, 3]  # the server has read up to 3
            proxy.cut()
            unread = await asyncio.to_thread(publish_placed, publisher, 5)  # 4..8, which the server cannot read
            assert [r["position"] for r in unread] == [4, 5, 6, 7, 8]
            async with connect(f"{server.url}?after=6") as ahead, connect(f"{server.url}?after=2") as behind:
                assert await receive_until_ready(ahead) == []
                assert [f["position"] for f in await receive_until_ready(behind)] == [3]
                proxy.restore()
                assert await receive_positions(watcher, 5) == [4, 5, 6, 7, 8]
                await asyncio.to_thread(publish_placed, publisher, 2)
                assert await receive_positions(ahead, 4) == [7, 8, 9, 10]
                assert await receive_positions(behind, 7) == [4, 5, 6, 7, 8, 9, 10]
                assert await nothing_arrives(ahead)

    try:
        asyncio.run(scenario())
    finally:
        proxy.stop()


def test_a_resume_asked_before_the_server_has_read_the_stream_waits_for_that_read(
    start_ws, publisher, redis_url: str, log_dir: Path
) -> None:
    """Redis is out of reach as the server starts: a resume gets nothing until the window is primed, then its replay.

    A client without ``after`` is live at once, and the primed window is not
    sent to it as if it were new.
    """
    before = publish_placed(publisher, 5)
    redis_at = urlsplit(redis_url)
    proxy = TcpProxy(redis_at.hostname or "127.0.0.1", redis_at.port or 6379).start()
    proxy.cut()
    server = WsServer(f"redis://127.0.0.1:{proxy.port}/0", log_dir)
    Service.start(server)
    healthz = f"http://127.0.0.1:{server.port}/healthz"
    try:
        wait_until(lambda: requests.get(healthz, timeout=3).status_code == 503, what="the server up, Redis not")

        async def scenario() -> None:
            async with connect(f"{server.url}?after=2") as resuming, connect(server.url) as fresh:
                assert orjson.loads(await asyncio.wait_for(fresh.recv(), 10)) == {"type": "ready"}
                assert await nothing_arrives(resuming, 1.0), "answered before the server could know"
                proxy.restore()
                assert [f["position"] for f in await receive_until_ready(resuming)] == [3, 4, 5]
                later = await asyncio.to_thread(publish_placed, publisher, 1)
                assert await receive_positions(fresh, 1) == [later[0]["position"]] == [6]
                assert await receive_positions(resuming, 1) == [6]

        asyncio.run(scenario())
    finally:
        server.stop()
        proxy.stop()
    assert [r["position"] for r in before] == [1, 2, 3, 4, 5]


def test_entries_of_the_previous_release_are_delivered_and_replayed_but_never_resumed_from(start_ws, publisher) -> None:
    """A rolling upgrade: an ingestion process of the previous release writes entries without a position."""
    server = start_ws()
    unplaced = orjson.dumps({"id": "01a00000-0000-7000-8000-00000000000a", "channel": "dummy", "payload": {}})

    async def scenario() -> None:
        async with connect(server.url) as ws:
            await receive_until_ready(ws)
            await asyncio.to_thread(publish_placed, publisher, 2)
            publisher.client.xadd("messages:live", {"id": "01a00000-0000-7000-8000-00000000000a", "frame": unplaced})
            await asyncio.to_thread(publish_placed, publisher, 1)
            frames = await receive_frames(ws, 4)
            assert [f.get("position") for f in frames] == [1, 2, None, 3]
        async with connect(f"{server.url}?after=1") as ws:
            assert [f.get("position") for f in await receive_until_ready(ws)] == [2, None, 3]
        async with connect(f"{server.url}?after=2") as ws:
            assert [f.get("position") for f in await receive_until_ready(ws)] == [None, 3]

    asyncio.run(scenario())


def raw_idle_client(port: int) -> socket.socket:
    """A websocket client that completes the handshake and then never reads."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    return sock


@pytest.mark.parametrize("policy", ["disconnect", "drop"])
def test_a_client_that_never_reads_neither_delays_others_nor_grows_memory(start_ws, publisher, policy) -> None:
    server = start_ws(
        WS_SLOW_CLIENT_POLICY=policy, WS_MAX_BUFFER_BYTES="262144", WS_WINDOW_MAX_BYTES="4194304", LIVE_WINDOW="1000"
    )
    process = psutil.Process(server.process.pid)
    idle = raw_idle_client(server.port)

    async def scenario() -> float:
        async with connect(server.url, max_size=2**20) as ws:
            await receive_until_ready(ws)
            baseline = process.memory_info().rss
            started = time.monotonic()
            received, ids = await asyncio.gather(
                receive_ids(ws, 3000), publish_from_another_process(publisher, 3000, 8000)
            )  # ~24 MB through each client
            assert received == ids
            elapsed = time.monotonic() - started
            growth = process.memory_info().rss - baseline
            assert growth < 32 * 2**20, f"server grew by {growth / 2**20:.0f} MiB"
            return elapsed

    elapsed = asyncio.run(scenario())
    assert elapsed < 30, f"the reading client needed {elapsed:.1f}s"
    idle.close()
    if policy == "disconnect":
        assert "disconnecting slow client" in server.log()


def test_two_servers_both_deliver_every_message(start_ws, publisher) -> None:
    servers = [start_ws(), start_ws()]

    async def scenario() -> None:
        clients = [await connect(s.url) for s in servers]
        for ws in clients:
            await receive_until_ready(ws)
        ids = await asyncio.to_thread(publish, publisher, 100)
        for ws in clients:
            assert await receive_ids(ws, 100) == ids
            await ws.close()

    asyncio.run(scenario())


def test_client_frames_close_the_connection(start_ws) -> None:
    server = start_ws()

    async def scenario() -> None:
        async with connect(server.url) as ws:
            await receive_until_ready(ws)
            await ws.send("hello?")
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
            assert info.value.rcvd.code == 1003
        async with connect(server.url) as ws:
            await receive_until_ready(ws)
            await ws.send("x" * 10_000)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
            assert info.value.rcvd.code == 1009

    asyncio.run(scenario())


def test_healthz_reports_redis(start_ws, log_dir: Path) -> None:
    server = start_ws()
    response = requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    dead = WsServer(f"redis://127.0.0.1:{free_port()}/0", log_dir)
    Service.start(dead)
    try:
        url = f"http://127.0.0.1:{dead.port}/healthz"
        from tests.helpers import wait_until

        wait_until(lambda: requests.get(url, timeout=3).status_code == 503, what="503 from healthz")
        assert requests.get(url, timeout=3).json()["error"] == "redis_unavailable"
    finally:
        dead.stop()


def test_sigterm_closes_clients_with_going_away(start_ws) -> None:
    server = start_ws()

    async def scenario() -> None:
        async with connect(server.url) as ws:
            await receive_until_ready(ws)
            server.signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
            assert info.value.rcvd.code == 1001

    asyncio.run(scenario())
    assert server.process.wait(10) == 0


def test_malformed_stream_entries_are_skipped(start_ws, publisher) -> None:
    server = start_ws()

    async def scenario() -> None:
        async with connect(server.url) as ws:
            await receive_until_ready(ws)
            publisher.client.xadd("messages:live", {"frame": b"{}"})  # no id field
            ids = await asyncio.to_thread(publish, publisher, 3)
            assert await receive_ids(ws, 3) == ids

    asyncio.run(scenario())
    assert "skipping malformed live stream entry" in server.log()


def test_compression_can_be_enabled(start_ws, publisher) -> None:
    server = start_ws(WS_COMPRESSION="deflate")

    async def scenario() -> None:
        async with (
            connect(server.url, compression="deflate") as deflated,
            connect(server.url, compression=None) as plain,
        ):
            assert deflated.protocol.extensions and not plain.protocol.extensions
            await receive_until_ready(deflated)
            await receive_until_ready(plain)
            ids = await asyncio.to_thread(publish, publisher, 20, 500)
            assert await receive_ids(deflated, 20) == ids
            assert await receive_ids(plain, 20) == ids

    asyncio.run(scenario())


def test_the_websocket_server_imports_no_flask_or_sqlalchemy() -> None:
    """The house rule: the fan-out process stays small (STYLE.md); it loads neither framework."""
    code = "import sys, wsserver; print(sorted(m for m in ('flask', 'sqlalchemy') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "[]"


def tally(sent: list[str], frames: list[dict]) -> tuple[int, int, int]:
    """(messages received, missed with a reset naming the next one, missed silently); in order, none twice."""
    index = {message_id: i for i, message_id in enumerate(sent)}
    expected = received = announced = silent = 0
    reset_oldest = None
    for frame in frames:
        if frame.get("type") == "reset":
            reset_oldest = frame["oldest"]
            continue
        i = index[frame["id"]]
        assert i >= expected, f"{frame['id']} out of order or twice"
        if frame["position"] == reset_oldest:
            announced += i - expected
        else:
            silent += i - expected
        expected, received, reset_oldest = i + 1, received + 1, None
    return received, announced, silent


async def receive_through(ws: ClientConnection, last: str) -> list[dict]:
    """Every frame until the message ``last``."""
    frames = []
    while not frames or frames[-1].get("id") != last:
        frames.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10)))
    return frames


@pytest.mark.faults
def test_a_server_stalled_past_the_stream_cap_sends_reset_instead_of_a_silent_gap(start_ws, redis_url: str) -> None:
    """SIGSTOP the server while more than the live stream holds is published: its clients are told, then go on."""
    # The stream is capped at ~100 entries; the server's own window is larger so that, without the
    # gap check, it would even replay across the gap to a client resuming from before it.
    server = start_ws(LIVE_WINDOW="5000")
    capped = Producer(redis.Redis.from_url(redis_url), "persist", "messages:live", 100, 60)

    async def scenario() -> None:
        async with connect(server.url) as ws, connect(f"{server.url}?channel=other") as other:
            await receive_until_ready(ws)
            await receive_until_ready(other)
            before = await asyncio.to_thread(publish_placed, capped, 10)
            assert await receive_ids(ws, 10) == [r["id"] for r in before]
            server.signal(signal.SIGSTOP)
            try:
                during = await asyncio.to_thread(publish_placed, capped, 1000)
            finally:
                server.signal(signal.SIGCONT)
            after = await asyncio.to_thread(publish_placed, capped, 10)
            records = before + during + after
            sent = [r["id"] for r in records]
            frames = await receive_through(ws, sent[-1])
            resets = [f for f in frames if f.get("type") == "reset"]
            received, announced, silent = tally(sent, frames)
            print(
                f"FAULT wsserver stalled: sent={len(sent)} received={received} "
                f"missed_with_reset={announced} missed_silently={silent} resets={len(resets)}"
            )
            assert silent == 0 and received + announced == len(sent)
            during_positions = {r["position"] for r in during}
            assert [(f["reason"], f["oldest"] in during_positions) for f in resets] == [("server_fell_behind", True)]
            # A client of another channel may have missed messages of its own: it is told too.
            assert orjson.loads(await asyncio.wait_for(other.recv(), 10)) == resets[0]
        # Resuming from before the gap would cross it: reset; from after it, an exact replay.
        async with connect(f"{server.url}?after={before[-1]['position']}") as ws:
            assert [f["reason"] for f in await receive_until_ready(ws)] == ["unknown_or_expired_id"]
        oldest = resets[0]["oldest"]
        async with connect(f"{server.url}?after={oldest}") as ws:
            replay = await receive_until_ready(ws)
            assert [f["position"] for f in replay] == [r["position"] for r in records if r["position"] > oldest]

    asyncio.run(scenario())
    assert "trimmed before this server read them" in server.log()
