"""Signed tokens on the websocket: the handshake's 401/403, the 4401 close at expiry, a loss-free reconnect.

The real wsserver process on a real Redis, with ``JWT_SECRET`` (HS256) or ``JWT_PUBLIC_KEY`` (RS256).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import threading
import time

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.broker.producer import Producer
from tests.live.test_server import publish, receive_frames, receive_until_ready

pytestmark = pytest.mark.e2e

SECRET = "test-secret-of-at-least-32-bytes-for-hs256"


def claims(channels: dict[str, list[str]], ttl: float = 60, sub: str = "user-1") -> dict:
    return {"sub": sub, "exp": int(time.time() + ttl), "channels": channels}


def hs256(channels: dict[str, list[str]], ttl: float = 60, secret: str = SECRET) -> str:
    return jwt.encode(claims(channels, ttl), secret, algorithm="HS256")


def unsigned(channels: dict[str, list[str]]) -> str:
    """A token with ``alg: none`` and no signature, as an attacker would forge one."""
    return jwt.encode(claims(channels), None, algorithm="none")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hmac_signed_with(key: bytes, channels: dict[str, list[str]]) -> str:
    """HS256 with ``key`` as the secret, by hand: PyJWT refuses to sign with a PEM public key (algorithm confusion)."""
    signing_input = f"{b64(orjson.dumps({'alg': 'HS256', 'typ': 'JWT'}))}.{b64(orjson.dumps(claims(channels)))}"
    return f"{signing_input}.{b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())}"


async def refusal(url: str, **options) -> tuple[int, dict, Headers]:
    """Status, JSON body and headers of a refused handshake."""
    with pytest.raises(InvalidStatus) as info:
        await connect(url, **options)
    response = info.value.response
    return response.status_code, orjson.loads(response.body), response.headers


async def accepted(url: str, **options) -> None:
    async with connect(url, **options) as ws:
        assert await receive_until_ready(ws) == []


def test_handshake_without_a_valid_token_is_refused_with_401(start_ws) -> None:
    server = start_ws(JWT_SECRET=SECRET, AUTH_FAILURE_LIMIT="100/minute")
    every = {"*": ["subscribe"]}
    cases = {
        "no token": ("", "unauthorized"),
        "bad signature": (f"?token={hs256(every, secret='another-secret-of-at-least-32-bytes')}", "unauthorized"),
        "alg none": (f"?token={unsigned(every)}", "unauthorized"),
        "expired": (f"?token={hs256(every, ttl=-5)}", "token_expired"),
        "not a token": ("?token=abc", "unauthorized"),
    }

    async def scenario() -> None:
        for case, (query, code) in cases.items():
            status, body, headers = await refusal(f"{server.url}{query}")
            assert (status, body["error"]) == (401, code), case
            # RFC 6750, as the APIs answer: an error code only when a token was presented.
            challenge = 'Bearer realm="messages"' + ("" if case == "no token" else ', error="invalid_token"')
            assert headers["WWW-Authenticate"] == challenge, case
            assert headers["Access-Control-Allow-Origin"] == "*", "a page can read why its socket was refused"
        await accepted(f"{server.url}?token={hs256(every)}")
        await accepted(server.url, additional_headers={"Authorization": f"Bearer {hs256(every)}"})

    asyncio.run(scenario())


def test_handshake_for_a_channel_the_token_does_not_cover_is_refused_with_403(start_ws) -> None:
    server = start_ws(JWT_SECRET=SECRET)
    orders = hs256({"orders.*": ["subscribe"], "audit": ["history"]})

    async def scenario() -> None:
        for selection, channel in [
            ("channel=chat&", "'chat'"),
            ("channel=orders.1&channel=chat&", "'chat'"),
            ("channel=audit&", "'audit'"),  # history is not subscribe
            ("", "'*'"),  # every channel needs the pattern *
        ]:
            status, body, headers = await refusal(f"{server.url}?{selection}token={orders}")
            assert (status, body["error"]) == (403, "forbidden"), selection
            assert channel in body["message"] and "subscribe" in body["message"], body
            assert "WWW-Authenticate" not in headers

    asyncio.run(scenario())


def test_a_prefix_pattern_allows_its_channels_and_delivers_only_the_selected_ones(
    start_ws, publisher: Producer
) -> None:
    server = start_ws(JWT_SECRET=SECRET)
    token = hs256({"orders.*": ["subscribe"]})

    async def scenario() -> None:
        async with connect(f"{server.url}?channel=orders.1&channel=orders.22&token={token}") as ws:
            assert await receive_until_ready(ws) == []
            sent = [publish(publisher, 1, channel=c)[0] for c in ["orders.1", "chat", "orders.22", "orders.3"]]
            assert [f["id"] for f in await receive_frames(ws, 2)] == [sent[0], sent[2]]

    asyncio.run(scenario())


def test_failed_authentication_counts_against_the_limit_but_a_forbidden_channel_does_not(start_ws) -> None:
    server = start_ws(JWT_SECRET=SECRET, AUTH_FAILURE_LIMIT="2/minute")
    other = hs256({"orders.1": ["subscribe"]})

    async def scenario() -> None:
        forbidden = [(await refusal(f"{server.url}?channel=chat&token={other}"))[0] for _ in range(3)]
        assert forbidden == [403] * 3
        expired = hs256({"*": ["subscribe"]}, ttl=-5)
        statuses = [(await refusal(f"{server.url}?token={expired}"))[0] for _ in range(3)]
        assert statuses == [401, 401, 429]

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_rs256_tokens_are_accepted_with_the_public_key_and_hs256_confusion_is_refused(start_ws, rsa_key) -> None:
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    server = start_ws(JWT_PUBLIC_KEY=public_pem.decode())
    good = jwt.encode(claims({"orders.*": ["subscribe"]}), rsa_key, algorithm="RS256")
    confused = hmac_signed_with(public_pem, {"*": ["subscribe"]})

    async def scenario() -> None:
        await accepted(f"{server.url}?channel=orders.7&token={good}")
        assert (await refusal(f"{server.url}?channel=chat&token={good}"))[0] == 403
        status, body, _ = await refusal(f"{server.url}?token={confused}")
        assert (status, body["error"]) == (401, "unauthorized")
        assert (await refusal(f"{server.url}?channel=orders.7&token={hs256({'*': ['subscribe']})}"))[0] == 401

    asyncio.run(scenario())


async def until_closed(ws: ClientConnection, received: list[dict]) -> ConnectionClosed:
    """Collect message frames until the server closes the connection; return how it closed."""
    try:
        while True:
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 15))
            if "type" not in frame:
                received.append(frame)
    except ConnectionClosed as closed:
        return closed


def test_an_expired_token_closes_the_socket_with_4401_and_a_fresh_one_resumes_without_loss(
    start_ws, publisher: Producer
) -> None:
    """Messages flow all along: the first socket's ids plus the resumed socket's are exactly those published."""
    server = start_ws(JWT_SECRET=SECRET)
    published: list[str] = []
    stop = threading.Event()

    def keep_publishing() -> None:
        while not stop.is_set():
            published.extend(publish(publisher, 1, channel="orders.1"))
            publish(publisher, 1, channel="chat")  # not selected: never delivered
            time.sleep(0.02)

    async def scenario() -> None:
        short = hs256({"orders.*": ["subscribe"]}, ttl=3)
        expires_at = jwt.decode(short, options={"verify_signature": False})["exp"]
        first: list[dict] = []
        async with connect(f"{server.url}?channel=orders.1&token={short}") as ws:
            await receive_until_ready(ws)
            closed = await until_closed(ws, first)
        assert (closed.rcvd.code, closed.rcvd.reason) == (4401, "token expired")
        assert expires_at - 0.5 <= time.time() <= expires_at + 3, "closed at the token's expiry"
        assert first, "messages arrived before the expiry"
        await asyncio.sleep(0.3)  # a few messages are published while no socket is open
        fresh = hs256({"orders.*": ["subscribe"]})
        second: list[str] = []
        # Resume from the last position received (of channel orders.1; chat's positions are between them).
        async with connect(f"{server.url}?channel=orders.1&after={first[-1]['position']}&token={fresh}") as ws:
            second += [f["id"] for f in await receive_until_ready(ws)]
            assert second, "the messages published meanwhile were replayed"
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.to_thread(publisher_thread.join)
            while not second or second[-1] != published[-1]:
                second += [f["id"] for f in await receive_frames(ws, 1)]
        # From the first message the first socket got (what was published before it joined is not its to get).
        ids = [frame["id"] for frame in first]
        assert ids + second == published[published.index(ids[0]) :], "no loss or repeat across the expiry"

    publisher_thread = threading.Thread(target=keep_publishing)
    publisher_thread.start()
    try:
        asyncio.run(scenario())
    finally:
        stop.set()
        publisher_thread.join()
