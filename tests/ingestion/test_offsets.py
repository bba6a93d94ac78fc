"""The ingestion API's 202 names each message's offset; without seeded counters it accepts nothing (real Redis)."""

from __future__ import annotations

import redis
from flask.testing import FlaskClient

from relay.broker.positions import Positions
from tests.helpers import take_tasks


def test_the_202_names_the_offset_consecutive_over_sequential_requests(client: FlaskClient, r: redis.Redis) -> None:
    singles = [client.post("/channels/a/messages", json={"n": n}).get_json() for n in range(3)]
    batch = client.post("/channels/a/messages/batch", json=[{"n": 3}, {"n": 4}]).get_json()
    elsewhere = client.post("/dummy", json={}).get_json()
    then = client.post("/channels/a/messages", json={"n": 5}).get_json()
    assert [answer["offset"] for answer in singles] == [1, 2, 3]
    assert batch["offsets"] == [4, 5] and "offset" not in batch
    assert elsewhere["offset"] == 1, "another channel counts on its own"
    assert then["offset"] == 6
    queued = {record["id"]: (record["offset"], record["position"]) for task in take_tasks(r) for record in task}
    ids = [answer["id"] for answer in singles] + batch["ids"] + [elsewhere["id"], then["id"]]
    assert [queued[i] for i in ids] == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (1, 6), (6, 7)]


def test_an_idempotent_repeat_answers_the_first_offset(client: FlaskClient) -> None:
    key = {"Idempotency-Key": "k-9"}
    first = client.post("/channels/a/messages/batch", json=[{}, {}], headers=key)
    client.post("/channels/a/messages", json={})
    again = client.post("/channels/a/messages/batch", json=[{}, {}], headers=key)
    assert first.get_json()["offsets"] == [1, 2] and again.get_json() == first.get_json()
    assert client.post("/channels/a/messages", json={}).get_json()["offset"] == 4, "the repeat took no offset"


def test_unseeded_counters_are_503_positions_unseeded_and_nothing_is_queued(
    client: FlaskClient, r: redis.Redis
) -> None:
    """A new or emptied Redis no worker has seeded: refusing beats giving stored offsets again."""
    r.delete("persist:positions")
    for path, body in (("/dummy", {}), ("/channels/a/messages", {}), ("/channels/a/messages/batch", [{}, {}])):
        response = client.post(path, json=body)
        assert response.status_code == 503, path
        assert response.get_json()["error"] == "positions_unseeded" and response.headers["Retry-After"] == "1"
        assert "Location" not in response.headers
    assert r.zcard("persist:pending") == r.hlen("persist:pending:records") == r.zcard("persist:pending:positions") == 0
    assert r.xlen("messages:live") == 0 and take_tasks(r) == []
    Positions(r, "persist").seed(0, {})  # a worker starts
    assert client.post("/channels/a/messages", json={}).get_json()["offset"] == 1
