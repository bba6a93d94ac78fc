"""Redis' memory as a 202 needs it (relay.broker.memory): the policy alone, then read from a real Redis."""

from __future__ import annotations

import pytest
import redis

from relay.broker.memory import Memory, MemoryWatch, evicting, refusal
from tests.helpers import fill_redis_to

MB = 1024 * 1024


def test_noeviction_below_the_high_water_mark_refuses_nothing() -> None:
    assert refusal(Memory(used=79 * MB, limit=100 * MB, policy="noeviction"), high_water=0.8) is None


def test_no_maxmemory_is_never_full() -> None:
    assert refusal(Memory(used=10_000 * MB, limit=0, policy="noeviction"), high_water=0.8) is None


def test_at_the_high_water_mark_is_queue_full_naming_the_setting() -> None:
    found = refusal(Memory(used=80 * MB, limit=100 * MB, policy="noeviction"), high_water=0.8)
    assert found is not None and found.code == "queue_full"
    assert "REDIS_MEMORY_HIGH_WATER" in found.message and "80%" in found.message


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "allkeys-random", "volatile-ttl", "allkeys-lfu"])
def test_every_evicting_policy_is_refused_naming_the_setting_even_with_room(policy: str) -> None:
    """volatile-* too: fences and idempotency keys carry a TTL, and evicting them breaks exactly once."""
    found = refusal(Memory(used=1 * MB, limit=100 * MB, policy=policy), high_water=0.8)
    assert found is not None and found.code == "redis_evicting"
    assert "maxmemory-policy" in found.message and policy in found.message
    assert evicting(Memory(used=1 * MB, limit=0, policy=policy)) == found


@pytest.mark.parametrize("high_water", [0, -0.1, 1.01])
def test_a_high_water_mark_outside_0_to_1_is_refused(high_water: float) -> None:
    with pytest.raises(ValueError, match="REDIS_MEMORY_HIGH_WATER"):
        MemoryWatch(dict, high_water)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_watch_reads_redis_at_most_once_per_interval() -> None:
    reads: list[dict] = []
    answers = iter([{"used_memory": 1, "maxmemory": 100, "maxmemory_policy": "allkeys-lru"}] * 2)

    def read() -> dict:
        reads.append(answer := next(answers))
        return answer

    clock = Clock()
    watch = MemoryWatch(read, 0.8, interval=1.0, clock=clock)
    for _ in range(100):
        assert watch.refusal().code == "redis_evicting"
    clock.now = 1.0
    watch.refusal()
    assert len(reads) == 2


def test_near_the_mark_the_watch_reads_twenty_times_as_often() -> None:
    """Fast ingestion must not carry Redis from below the mark past maxmemory within one interval."""
    used = iter([69, 71, 81, 79])  # % of maxmemory: far, near, over, near
    reads = 0

    def read() -> dict:
        nonlocal reads
        reads += 1
        return {"used_memory": next(used), "maxmemory": 100, "maxmemory_policy": "noeviction"}

    clock = Clock()
    watch = MemoryWatch(read, 0.8, interval=1.0, clock=clock)
    assert watch.refusal() is None
    clock.now = 1.0
    assert watch.refusal() is None and reads == 2
    clock.now = 1.05
    assert watch.refusal().code == "queue_full" and reads == 3
    clock.now = 1.1
    assert watch.refusal() is None and reads == 4


def test_a_failed_read_refuses_nothing_and_is_not_retried_within_the_interval() -> None:
    """Redis away: the write that follows answers for itself (503 within ~1 s), with no second wait here."""
    calls = 0

    def read() -> dict:
        nonlocal calls
        calls += 1
        raise redis.TimeoutError("Timeout reading from socket")

    clock = Clock()
    watch = MemoryWatch(read, 0.8, clock=clock)
    assert watch.refusal() is None and watch.refusal() is None
    assert calls == 1


def test_the_watch_reads_info_memory_of_a_real_redis(redis_config_restored: redis.Redis) -> None:
    clock = Clock()
    watch = MemoryWatch(lambda: redis_config_restored.info("memory"), 0.8, clock=clock)
    assert watch.refusal() is None
    fill_redis_to(redis_config_restored, 0.9)  # past the mark (0.8), short of the limit
    clock.now += 1
    assert watch.refusal().code == "queue_full"
    redis_config_restored.config_set("maxmemory", 0)
    redis_config_restored.config_set("maxmemory-policy", "allkeys-lru")
    clock.now += 1
    assert watch.refusal().code == "redis_evicting"
    redis_config_restored.config_set("maxmemory-policy", "noeviction")
    clock.now += 1
    assert watch.refusal() is None
