"""Offsets and positions given by the accept script, and the counters and watermark behind them, on a real Redis.

Each write goes through a real :class:`relay.broker.producer.Producer` (no
task messages: the records stay pending, as they would until a worker
stores them). The ``redis_url`` fixture seeds the counters for an empty
database, so a test's first message is at position 1, offset 1 of its channel.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time

import orjson
import pytest
import redis

from relay.broker.connection import connect
from relay.broker.pending import Pending
from relay.broker.positions import Positions
from relay.broker.producer import Idempotency, PositionsUnseeded, Producer
from relay.records import make_record, utc_now
from tests.helpers import redis_busy, wait_until
from tests.tcp_proxy import TcpProxy

QUEUE = "persist"
STREAM = "messages:live"


def message(channel: str = "dummy", n: int = 0) -> dict:
    return make_record({"n": n}, utc_now(), channel=channel)


def producer(url: str, **options: object) -> Producer:
    """A producer of the ``persist`` queue on ``url`` that sends no task messages (records stay pending)."""
    return Producer(connect(url, 5.0), QUEUE, STREAM, 1000, 60, **options)


def placed(records: list[dict]) -> list[tuple[int, int]]:
    """Each record's (offset, position)."""
    return [(record["offset"], record["position"]) for record in records]


def counters(client: redis.Redis) -> dict[str, int]:
    return {field.decode(): int(value) for field, value in client.hgetall("persist:positions").items()}


def single_answer(record: dict) -> dict:
    """The ingestion API's answer for one message, before the accept script adds its offset."""
    return {"id": record["id"], "received_at": record["received_at"], "channel": record["channel"]}


def test_sequential_single_writes_to_one_channel_get_offsets_1_2_3_and_consecutive_positions(redis_url: str) -> None:
    queue = producer(redis_url)
    client = redis.Redis.from_url(redis_url)
    records = [message("a", n) for n in range(5)]
    for record in records:
        queue.write([record])
    assert placed(records) == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
    pending = Pending(client, QUEUE)
    assert [placed([pending.record(r["id"])])[0] for r in records] == placed(records), "the pending records carry both"
    entries = client.xrange(STREAM)
    assert [int(fields[b"position"]) for _, fields in entries] == [1, 2, 3, 4, 5]
    frames = [orjson.loads(fields[b"frame"]) for _, fields in entries]
    assert [(f["id"], f["offset"], f["position"]) for f in frames] == [(r["id"], *placed([r])[0]) for r in records]


def test_a_batch_takes_consecutive_offsets_in_input_order(redis_url: str) -> None:
    queue = producer(redis_url)
    first = message("a")
    queue.write([first])
    batch = [message("a", n) for n in range(4)]
    answer = queue.enqueue(batch, {"ids": [r["id"] for r in batch], "received_at": "t", "channel": "a"}).answer
    assert placed(batch) == [(2, 2), (3, 3), (4, 4), (5, 5)]
    assert answer["offsets"] == [2, 3, 4, 5] and "offset" not in answer
    assert [int(f[b"position"]) for _, f in redis.Redis.from_url(redis_url).xrange(STREAM)] == [1, 2, 3, 4, 5]


def test_channels_keep_their_own_offsets_while_positions_run_over_all_of_them(redis_url: str) -> None:
    queue = producer(redis_url)
    a1, b1, a2 = message("a"), message("b"), message("a")
    mixed = [message("b"), message("a"), message("c")]
    for records in ([a1], [b1], [a2], mixed):
        queue.write(records)
    assert placed([a1, b1, a2, *mixed]) == [(1, 1), (1, 2), (2, 3), (2, 4), (3, 5), (1, 6)]
    assert counters(redis.Redis.from_url(redis_url)) == {"*": 6, "a": 3, "b": 2, "c": 1}


def test_a_group_commit_write_gives_each_request_its_own_offsets(redis_url: str) -> None:
    """Requests held behind a write (Redis busy) go out in one write; each answer names its own records' offsets."""
    queue = producer(redis_url, group_commit=True)
    requests = [[message("a", n)] for n in range(3)] + [[message("a", n) for n in range(3)] for _ in range(3)]
    client = redis.Redis.from_url(redis_url)

    def enqueue(records: list[dict]) -> dict:
        answer = {"ids": [r["id"] for r in records]} if len(records) > 1 else single_answer(records[0])
        return queue.enqueue(records, answer).answer

    with redis_busy(redis_url, 0.6), concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(enqueue, requests))
    fences = client.keys("persist:fence:*")
    assert len(fences) == 2, "the first request wrote alone, the five behind it in one write"
    for records, answer in zip(requests, answers, strict=True):
        offsets = [r["offset"] for r in records]
        assert (answer["offsets"] if len(records) > 1 else [answer["offset"]]) == offsets
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), "a request's offsets are consecutive"
        assert [r["position"] - r["offset"] for r in records] == [0] * len(records), "one channel: position = offset"
    assert sorted(r["offset"] for records in requests for r in records) == list(range(1, 13))


def test_an_idempotent_repeat_answers_the_same_offsets_and_writes_nothing(redis_url: str) -> None:
    queue = producer(redis_url)
    client = redis.Redis.from_url(redis_url)
    once = Idempotency("idempotency:anonymous:post_message:k-1", "f" * 64)
    batch_key = Idempotency("idempotency:anonymous:post_batch:k-2", "e" * 64)
    first = message("a")
    answer = queue.enqueue([first], single_answer(first), once).answer
    batch = [message("a"), message("a")]
    batch_answer = queue.enqueue(batch, {"ids": [r["id"] for r in batch]}, batch_key).answer
    assert answer["offset"] == 1 and batch_answer["offsets"] == [2, 3]
    before = (counters(client), client.xlen(STREAM), client.zcard("persist:pending:positions"))
    retry = message("a")  # a retried request gets a new id; the key answers the first one's
    repeated = queue.enqueue([retry], single_answer(retry), once)
    retried_batch = [message("a"), message("a")]
    repeated_batch = queue.enqueue(retried_batch, {"ids": [r["id"] for r in retried_batch]}, batch_key)
    assert repeated.repeated and repeated.answer == answer
    assert repeated_batch.repeated and repeated_batch.answer == batch_answer
    assert (counters(client), client.xlen(STREAM), client.zcard("persist:pending:positions")) == before
    assert "offset" not in retry and "offset" not in retried_batch[0], "nothing was placed"


def test_a_settled_write_still_places_its_records_from_the_fences_outcome(
    redis_url: str,
) -> None:
    """The write's answer is lost (read timeout, Redis busy); it ran; settling reads where it placed the records.

    The settling probe goes through a frozen proxy until the write has run,
    so it finds the fence taken by the write rather than claiming it first.
    The scene needs the write to reach Redis while it is busy; on a loaded
    machine the busy loop can start late (its 50 ms probe times out for
    other reasons), so a run where no answer was lost is set up again, at
    most three times.
    """
    client = redis.Redis.from_url(redis_url)
    producer(redis_url).write([message("a")])  # position 1: the first settled write starts at 2
    for _attempt in range(3):
        last = int(client.hget("persist:positions", "*"))
        offsets = {ch: int(client.hget("persist:positions", ch) or 0) for ch in ("a", "b")}
        in_flight = client.zcard("persist:pending")  # accepted before: the write counts them for the sender
        records, fence, outcome, settled = lost_answer_write(client, redis_url)
        if settled:
            break
    else:
        pytest.fail("the answer was never lost in three tries: nothing was settled")
    assert outcome == {"live": True}
    expected_offsets = [offsets["a"] + 1, offsets["b"] + 1, offsets["a"] + 2]
    assert client.get(fence) == f"ok:1:{last + 1}:{','.join(map(str, expected_offsets))}:{in_flight}".encode()
    assert placed(records) == list(zip(expected_offsets, range(last + 1, last + 4), strict=True))
    pending = Pending(client, QUEUE)
    assert [placed([pending.record(r["id"])])[0] for r in records] == placed(records)


def lost_answer_write(client: redis.Redis, redis_url: str) -> tuple[list[dict], str, dict[str, object], bool]:
    """Write three records with a 0.2 s read timeout while Redis is busy, settling through a frozen proxy.

    Returns the records, the fence, the write's result and whether it was settled (its answer lost).
    """
    proxy = TcpProxy("127.0.0.1", client.connection_pool.connection_kwargs["port"]).start()
    probe = connect(f"redis://127.0.0.1:{proxy.port}/0", 5.0)
    impatient = connect(redis_url, 5.0, read_timeout=0.2)
    for connected in (probe, impatient):  # connected now, not while Redis is busy: only the commands wait
        connected.ping()
    queue = Producer(impatient, QUEUE, STREAM, 1000, 60, probe_client=probe)
    settled: list[str] = []
    settle = queue.settle
    queue.settle = lambda fence, started: settled.append(fence) or settle(fence, started)  # type: ignore[method-assign]
    records = [message("a"), message("b"), message("a")]
    fence = queue.new_fence()
    outcome: dict[str, object] = {}
    writer = threading.Thread(target=lambda: outcome.update(live=queue.write(records, fence=fence)))
    proxy.freeze()
    try:
        with redis_busy(redis_url, 2.0):  # wide margins: the suite runs two files at once on two cores
            writer.start()
            time.sleep(1.0)  # well past the write's read timeout: it is settling, its probe held in the proxy
            assert "offset" not in records[0]
        wait_until(lambda: (client.get(fence) or b"").startswith(b"ok:"), timeout=5, what="the write to run")
        proxy.thaw()
        writer.join(10)
    finally:
        proxy.stop()
    return records, fence, outcome, settled == [fence]


def test_an_unseeded_redis_refuses_the_write_and_keeps_nothing(redis_url: str) -> None:
    """No counters (a new or emptied Redis no worker has seeded): starting again at 1 would give numbers twice."""
    client = redis.Redis.from_url(redis_url)
    client.delete("persist:positions")
    queue = producer(redis_url)
    records = [message("a"), message("a")]
    with pytest.raises(PositionsUnseeded):
        queue.write(records)
    key = Idempotency("idempotency:anonymous:post_message:k-1", "f" * 64)
    with pytest.raises(PositionsUnseeded):
        queue.enqueue(records[:1], single_answer(records[0]), key)
    assert client.zcard("persist:pending") == client.zcard("persist:pending:positions") == 0
    assert client.hlen("persist:pending:records") == 0 and client.xlen(STREAM) == 0
    assert not client.exists("persist:positions", key.key), "no counters made up, no answer kept for a retry"
    assert "offset" not in records[0] and "position" not in records[0]
    Positions(client, QUEUE).seed(0, {})
    assert queue.enqueue(records[:1], single_answer(records[0]), key).answer["offset"] == 1, "the retry is written"


def test_seeding_only_ever_raises_the_counters(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    positions = Positions(client, QUEUE)
    assert positions.seed(10, {"a": 4, "b": 7}) == 10
    assert positions.seed(5, {"a": 2, "b": 9, "c": 1}) == 10
    assert counters(client) == {"*": 10, "a": 4, "b": 9, "c": 1}
    record = message("a")
    producer(redis_url).write([record])
    assert placed([record]) == [(5, 11)]


def test_seeding_counts_the_positions_still_pending(redis_url: str) -> None:
    """A Redis that kept its pending records but lost its counters: the database alone would give them again."""
    client = redis.Redis.from_url(redis_url)
    positions = Positions(client, QUEUE)
    producer(redis_url).write([message("a"), message("b"), message("a")])
    client.delete("persist:positions")
    assert not positions.seeded()
    assert positions.seed(1, {}) == 3 and positions.seeded()
    later = message("c")
    producer(redis_url).write([later])
    assert later["position"] == 4


def test_an_id_accepted_again_while_pending_keeps_its_first_position_under_the_watermark(redis_url: str) -> None:
    """A dead letter replayed twice: its first task may still store it at the first position, below any cursor
    a higher watermark would have let through."""
    client = redis.Redis.from_url(redis_url)
    positions = Positions(client, QUEUE)
    record = message("a")
    producer(redis_url).write([record])
    first = record["position"]
    again = {k: v for k, v in record.items() if k not in ("offset", "position")}
    producer(redis_url).write([again])
    assert again["position"] > first
    assert positions.watermark() == first


def test_the_watermark_is_the_lowest_pending_position_else_the_next_to_be_given(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    positions, pending = Positions(client, QUEUE), Pending(client, QUEUE)
    assert positions.watermark() == 1, "nothing given yet"
    records = [message("a", n) for n in range(3)]
    producer(redis_url).write(records)
    assert positions.watermark() == 1
    pending.done([records[1]["id"]])  # stored out of order: position 1 still holds the mark
    assert positions.watermark() == 1
    pending.done([records[0]["id"]])
    assert positions.watermark() == 3
    pending.done([records[2]["id"]])
    assert positions.watermark() == 4, "everything settled: the next position to be given"
    client.delete("persist:positions")
    assert positions.watermark() is None, "unseeded with nothing pending: nothing tells where messages stand"


def test_done_forgets_a_records_position(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    pending = Pending(client, QUEUE)
    first, second = message("a"), message("a")
    producer(redis_url).write([first, second])
    pending.done([first["id"]])
    assert client.zscore("persist:pending:positions", first["id"]) is None and pending.record(first["id"]) is None
    assert client.zscore("persist:pending:positions", second["id"]) == second["position"] == 2
    assert pending.record(second["id"])["offset"] == 2


def test_place_gives_legacy_records_positions_after_the_accepted_ones(redis_url: str) -> None:
    """Records queued by the release before positions come without: the worker places them, pending until stored."""
    client = redis.Redis.from_url(redis_url)
    positions = Positions(client, QUEUE)
    accepted = message("a")
    producer(redis_url).write([accepted])
    legacy = [message("a"), message("b"), message("a")]
    positions.place([*legacy[:2], accepted, legacy[2]])
    assert placed([accepted]) == [(1, 1)], "a placed record keeps its numbers"
    assert placed(legacy) == [(2, 2), (1, 3), (3, 4)]
    scores = {m.decode(): int(s) for m, s in client.zrange("persist:pending:positions", 0, -1, withscores=True)}
    assert scores == {accepted["id"]: 1, **{r["id"]: r["position"] for r in legacy}}, "the watermark holds at them"
    client.delete("persist:positions")
    unseeded = [message("a")]
    with pytest.raises(redis.ResponseError, match="not seeded"):
        positions.place(unseeded)
    assert "position" not in unseeded[0]


def test_the_pending_record_is_the_accepted_one_with_its_numbers(redis_url: str) -> None:
    """The accept script splices the numbers into the record; everything else stays as the API made it."""
    record = make_record({"x": "ü"}, utc_now(), channel="a")
    made = dict(record)
    producer(redis_url).write([record])
    stored = Pending(redis.Redis.from_url(redis_url), QUEUE).record(record["id"])
    assert stored == {**made, "offset": 1, "position": 1} == record
