"""The websocket server as a real process, against a real Redis."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psutil
import pytest
import redis
import requests
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from relay.broker.producer import Producer
from relay.records import make_record, utc_now
from tests.helpers import ROOT, Service, free_port
from tests.stack import WsServer

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


def publish(pub: Producer, count: int, size: int = 0, channel: str = "dummy") -> list[str]:
    ids = []
    for i in range(count):
        record = make_record({"i": i, "pad": "x" * size}, utc_now(), channel=channel)
        pub.enqueue([record], {})
        ids.append(record["id"])
    return ids


async def receive_until_ready(ws: ClientConnection) -> list[dict]:
    """Collect frames until the server's ready frame (the replay, and any reset)."""
    frames = []
    while True:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame.get("type") == "ready":
            return frames
        frames.append(frame)


async def receive_ids(ws: ClientConnection, count: int) -> list[str]:
    ids = []
    while len(ids) < count:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert "type" not in frame, frame
        ids.append(frame["id"])
    return ids


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
        assert set(frame) == {"id", "channel", "received_at", "payload"} and frame["payload"]["i"] == 0
        for ws in clients:
            await ws.close()

    asyncio.run(scenario())


def test_resume_replays_exactly_the_missed_messages_then_goes_live(start_ws, publisher) -> None:
    server = start_ws()

    async def scenario() -> None:
        async with connect(server.url) as watcher:
            await receive_until_ready(watcher)
            async with connect(server.url) as ws:
                await receive_until_ready(ws)
                first = await asyncio.to_thread(publish, publisher, 10)
                assert await receive_ids(ws, 10) == first
            missed = await asyncio.to_thread(publish, publisher, 15)
            # A frame reaches live clients only once the server keeps it for replay: when the watcher
            # has every missed message, all of them can be replayed (on a busy machine the server's
            # reader may otherwise still be on its way to the last one, which then comes live).
            assert await receive_ids(watcher, 25) == first + missed
        async with connect(f"{server.url}?after={first[-1]}") as ws:
            replay = await receive_until_ready(ws)
            assert [f["id"] for f in replay] == missed
            later = await asyncio.to_thread(publish, publisher, 5)
            assert await receive_ids(ws, 5) == later

    asyncio.run(scenario())


def publish_mixed(pub: Producer, pattern: str) -> list[tuple[str, str]]:
    """Publish one message per letter of ``pattern`` to the channel named by that letter; (channel, id) in order."""
    return [(channel, publish(pub, 1, channel=channel)[0]) for channel in pattern]


async def receive_frames(ws: ClientConnection, count: int) -> list[dict]:
    frames = [orjson.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(count)]
    assert all("type" not in f for f in frames), frames
    return frames


def test_each_client_receives_exactly_its_channels_in_order(start_ws, publisher) -> None:
    server = start_ws()
    selections = {"a": "?channel=a", "b": "?channel=b", "ac": "?channel=a&channel=c", "all": ""}

    async def scenario() -> None:
        clients = {name: await connect(f"{server.url}{query}") for name, query in selections.items()}
        for ws in clients.values():
            assert await receive_until_ready(ws) == []
        sent = await asyncio.to_thread(publish_mixed, publisher, "abcabcaab" * 5)
        for name, ws in clients.items():
            wanted = [(c, i) for c, i in sent if name == "all" or c in name]
            frames = await receive_frames(ws, len(wanted))
            assert [(f["channel"], f["id"]) for f in frames] == wanted, name
        # Nothing else arrives: a last message on channel "a" is the next frame of the "a" client.
        [(_, last)] = await asyncio.to_thread(publish_mixed, publisher, "a")
        assert (await receive_frames(clients["a"], 1))[0]["id"] == last
        assert (await receive_frames(clients["b"], 0)) == []
        for ws in clients.values():
            await ws.close()

    asyncio.run(scenario())


def test_resume_within_a_selection_replays_only_its_channels_from_an_id_of_any_channel(start_ws, publisher) -> None:
    server = start_ws()

    async def scenario() -> None:
        async with connect(server.url) as watcher:
            await receive_until_ready(watcher)
            sent = await asyncio.to_thread(publish_mixed, publisher, "abcab")
            await receive_frames(watcher, 5)  # every one is in the server's window now
            async with connect(f"{server.url}?channel=b&channel=c&after={sent[0][1]}") as ws:
                replay = await receive_until_ready(ws)
                assert [f["id"] for f in replay] == [i for c, i in sent[1:] if c in "bc"]
                later = await asyncio.to_thread(publish_mixed, publisher, "abca")
                frames = await receive_frames(ws, 2)
                assert [f["id"] for f in frames] == [i for c, i in later if c in "bc"]
            async with connect(f"{server.url}?channel=a&after=01a00000-0000-7000-8000-000000000000") as ws:
                first = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                assert first["type"] == "reset"
                assert await receive_until_ready(ws) == []

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
            head = await asyncio.to_thread(publish, publisher, 3)
            assert await receive_ids(ws, 3) == head
        producer = asyncio.create_task(asyncio.to_thread(publish, publisher, 300))
        await asyncio.sleep(0.05)
        async with connect(f"{server.url}?after={head[-1]}") as ws:
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
            assert [f["id"] for f in await receive_frames(ws, 3)] == [i for _, i in head]
        producer = asyncio.create_task(asyncio.to_thread(publish_mixed, publisher, "abc" * 100))
        await asyncio.sleep(0.05)
        async with connect(f"{server.url}?channel=a&channel=c&after={head[-1][1]}") as ws:
            frames = await receive_until_ready(ws)
            wanted = [i for c, i in await producer if c in "ac"]
            assert all(f["channel"] in "ac" for f in frames)
            seen = [f["id"] for f in frames]
            seen += [f["id"] for f in await receive_frames(ws, len(wanted) - len(seen))]
            assert seen == wanted
            # And nothing more: the next frame is a fresh message on channel a.
            [_, (_, last)] = await asyncio.to_thread(publish_mixed, publisher, "ba")
            assert (await receive_frames(ws, 1))[0]["id"] == last

    asyncio.run(scenario())


def test_unknown_or_expired_id_gets_a_reset_then_live(start_ws, publisher) -> None:
    server = start_ws(LIVE_WINDOW="20")

    async def scenario() -> None:
        async with connect(server.url) as watcher:
            await receive_until_ready(watcher)
            old = await asyncio.to_thread(publish, publisher, 50)
            # Once a live client has all 50, the server's window has moved past the first 30.
            assert await receive_ids(watcher, 50) == old
        for after in (old[0], "01a22649-0717-7cb0-a31f-94907ddc217f"):
            async with connect(f"{server.url}?after={after}") as ws:
                frames = await receive_until_ready(ws)
                assert [f["type"] for f in frames] == ["reset"]
                assert frames[0]["oldest"] in old[-20:]
                live = await asyncio.to_thread(publish, publisher, 2)
                assert await receive_ids(ws, 2) == live

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
    position = {message_id: i for i, message_id in enumerate(sent)}
    expected = received = announced = silent = 0
    reset_oldest = None
    for frame in frames:
        if frame.get("type") == "reset":
            reset_oldest = frame["oldest"]
            continue
        i = position[frame["id"]]
        assert i >= expected, f"{frame['id']} out of order or twice"
        if frame["id"] == reset_oldest:
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
            before = await asyncio.to_thread(publish, capped, 10)
            assert await receive_ids(ws, 10) == before
            server.signal(signal.SIGSTOP)
            try:
                during = await asyncio.to_thread(publish, capped, 1000)
            finally:
                server.signal(signal.SIGCONT)
            after = await asyncio.to_thread(publish, capped, 10)
            sent = before + during + after
            frames = await receive_through(ws, after[-1])
            resets = [f for f in frames if f.get("type") == "reset"]
            received, announced, silent = tally(sent, frames)
            print(
                f"FAULT wsserver stalled: sent={len(sent)} received={received} "
                f"missed_with_reset={announced} missed_silently={silent} resets={len(resets)}"
            )
            assert silent == 0 and received + announced == len(sent)
            assert [(f["reason"], f["oldest"] in during) for f in resets] == [("server_fell_behind", True)]
            # A client of another channel may have missed messages of its own: it is told too.
            assert orjson.loads(await asyncio.wait_for(other.recv(), 10)) == resets[0]
        # Resuming from before the gap would cross it: reset; from after it, an exact replay.
        async with connect(f"{server.url}?after={before[-1]}") as ws:
            assert [f["reason"] for f in await receive_until_ready(ws)] == ["unknown_or_expired_id"]
        async with connect(f"{server.url}?after={resets[0]['oldest']}") as ws:
            replay = await receive_until_ready(ws)
            assert [f["id"] for f in replay] == sent[sent.index(resets[0]["oldest"]) + 1 :]

    asyncio.run(scenario())
    assert "trimmed before this server read them" in server.log()
