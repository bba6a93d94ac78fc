"""Scale-out on one machine: 2 ingestion APIs, 3 Celery workers, 2 wsservers, one Redis and MariaDB."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
from pathlib import Path

import orjson
import pytest
import requests
from websockets.asyncio.client import connect

from tests.helpers import celery_worker, clear_database, free_port, gunicorn, python_env, wait_http_ok, wait_until
from tests.stack import wsserver

pytestmark = [pytest.mark.e2e, pytest.mark.mysql]


def test_every_message_stored_once_listed_without_gaps_and_delivered_by_both_wsservers(
    mysql_url: str, redis_url: str, log_dir: Path
) -> None:
    clear_database(mysql_url)
    list_port = free_port()
    env = python_env({"SQLALCHEMY_DATABASE_URI": mysql_url, "REDIS_URL": redis_url, "SECRET_KEY": "scale"})
    ingest_ports = [free_port(), free_port()]
    ws_ports = [free_port(), free_port()]
    services = [gunicorn(f"ingest-{p}", "ingestion_api", p, env, log_dir) for p in ingest_ports]
    services.append(gunicorn("list_api", "list_api", list_port, env, log_dir))
    services += [celery_worker(f"worker{i}", env, log_dir, concurrency=1) for i in range(3)]
    services += [wsserver(env, log_dir, p) for p in ws_ports]
    for service in services:
        service.start()
    try:
        for port in [*ingest_ports, list_port, *ws_ports]:
            wait_http_ok(f"http://127.0.0.1:{port}/healthz")
        asyncio.run(_scenario(ingest_ports, ws_ports, f"http://127.0.0.1:{list_port}"))
        for i in range(3):
            assert "stored" in services[3 + i].log(), f"worker{i} stored nothing: the load was not shared"
    finally:
        for service in services:
            service.stop()


async def _scenario(ingest_ports: list[int], ws_ports: list[int], list_url: str) -> None:
    clients = [await connect(f"ws://127.0.0.1:{port}/") for port in ws_ports]
    for ws in clients:
        assert orjson.loads(await ws.recv()) == {"type": "ready"}
    accepted = await asyncio.to_thread(_post_through_both_apis, ingest_ports, 600)
    delivered = await asyncio.gather(*(_receive(ws, len(accepted)) for ws in clients))
    for ids in delivered:
        assert sorted(ids) == sorted(accepted), "a wsserver missed or repeated messages"
    for ws in clients:
        await ws.close()

    def listing() -> list[str]:
        ids, cursor = [], None
        while True:
            params = {"limit": 250, **({"cursor": cursor} if cursor else {})}
            page = requests.get(f"{list_url}/messages", params=params, timeout=5).json()
            ids += [m["id"] for m in page["data"]]
            cursor = page["next_cursor"]
            if not page["has_more"]:
                return ids

    await asyncio.to_thread(wait_until, lambda: len(listing()) >= len(accepted), 60, 0.2, "everything listed")
    listed = await asyncio.to_thread(listing)
    assert len(listed) == len(set(listed)), "a message was stored twice"
    assert set(listed) == set(accepted), "the listing has gaps"


def _post_through_both_apis(ports: list[int], count: int) -> list[str]:
    sessions = itertools.cycle([(requests.Session(), port) for port in ports])
    jobs = [next(sessions) for _ in range(count)]

    def post(job: tuple[requests.Session, int]) -> str:
        session, port = job
        response = session.post(f"http://127.0.0.1:{port}/dummy", json={"via": port}, timeout=5)
        assert response.status_code == 202
        return response.json()["id"]

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        return list(pool.map(post, jobs))


async def _receive(ws, count: int) -> list[str]:
    ids = []
    while len(ids) < count:
        ids.append(orjson.loads(await asyncio.wait_for(ws.recv(), 20))["id"])
    return ids
