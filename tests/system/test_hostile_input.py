"""Hostile and odd input against the real servers: gunicorn-served APIs and the websocket server.

What the HTTP server itself does (Content-Length lies, chunked bodies, slow
uploads, framing errors) only shows against real gunicorn processes, so
every test here talks to real processes over sockets. The promise checked:
a bad request gets a JSON error (``{"error", "message"}``) and changes
nothing (the persistence queue and the live stream keep their length); odd
but valid input is stored and delivered exactly as the README describes.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import orjson
import psutil
import pytest
import redis
import requests
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.helpers import RedisServer, clear_database, wait_until
from tests.stack import Stack, running_stack, start_worker

pytestmark = pytest.mark.e2e

JSON_TYPE = "Content-Type: application/json\r\n"


@contextlib.contextmanager
def raised_fd_limit(wanted: int) -> Iterator[None]:
    """Raise this process's open-file limit (children started meanwhile inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack]) -> Iterator[Stack]:
    """Ingestion API (2 gunicorn workers, settings from gunicorn.conf.py as deployed), list API, wsserver; no Celery.

    Without a worker nothing consumes the queue, so its length tells exactly
    what a request queued.
    """
    with raised_fd_limit(8192):
        stack = start_stack(with_worker=False)
        stack.start_wsserver()  # inherits the raised limit: it will hold thousands of connections
        yield stack


@pytest.fixture
def broker(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.env["REDIS_URL"])


def lengths(broker: redis.Redis) -> tuple[int, int]:
    """Pending records and live stream length: what accepting a message writes, in one atomic script.

    (Not the queue's length: task messages follow the answer, sent from the API's sender thread.)
    """
    return broker.zcard("persist:pending"), broker.xlen("messages:live")


@pytest.fixture
def unchanged(broker: redis.Redis) -> Iterator[None]:
    """Fail the test if it queued or published anything."""
    before = lengths(broker)
    yield
    time.sleep(0.2)  # a request still being handled would land now
    assert lengths(broker) == before, "a rejected request changed the queue or the live stream"


def ingest_port(stack: Stack) -> int:
    return int(stack.ingest_url.rsplit(":", 1)[1])


def raw_http(port: int, data: bytes, half_close: bool = True, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send ``data`` as is, read the whole answer; return status, headers (lower-case names) and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # broken pipe, reset, not connected
            pass  # the server answered early (e.g. 413 on Content-Length) and stopped reading
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


def assert_json_error(
    status: int, headers: dict, body: bytes, expected_status: int, code: str | tuple[str, ...] | None = None
) -> None:
    assert status == expected_status, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), (headers, body[:300])
    error = orjson.loads(body)
    assert set(error) == {"error", "message"} and error["message"], error
    if code:
        assert error["error"] in ((code,) if isinstance(code, str) else code), error


def post(path: str = "/dummy", headers: str = "", length: int | None = None, body: bytes = b"") -> bytes:
    length_header = f"Content-Length: {len(body) if length is None else length}\r\n"
    return f"POST {path} HTTP/1.1\r\nHost: test\r\n{JSON_TYPE}{headers}{length_header}\r\n".encode() + body


# --- Content-Length lies and framing ---------------------------------------------------------------


@pytest.mark.parametrize("sent", [b'{"a": 1}', b'{"a": "trunc'], ids=["valid-json-prefix", "invalid-json-prefix"])
def test_body_shorter_than_its_content_length_is_rejected(stack: Stack, broker, sent: bytes) -> None:
    """The client declares 100 bytes, sends fewer, and closes: an incomplete message, never a 202.

    RFC 9112 section 8: a message whose connection closes before Content-Length
    octets arrived is incomplete. Accepting it stores a body the client never
    finished sending.
    """
    before = lengths(broker)
    status, headers, body = raw_http(ingest_port(stack), post(length=100, body=sent))
    time.sleep(0.2)
    assert (status, lengths(broker)) == (400, before), f"answered {status} {body[:100]!r}; queue/stream {before}"
    assert_json_error(status, headers, body, 400)


def test_body_longer_than_its_content_length_counts_only_the_declared_bytes(stack: Stack, broker) -> None:
    """Bytes past Content-Length are not the body. (On a keep-alive connection they are the next
    request, as HTTP/1.1 pipelining says; here they are garbage, which must not become a message.)"""
    garbage = b'{"smuggled": true} and not a request line at all\r\n\r\n'
    before = lengths(broker)
    status, _, body = raw_http(ingest_port(stack), post(length=8, body=b'{"a": 1}' + garbage))
    assert status == 202, body
    time.sleep(0.3)
    assert lengths(broker) == (before[0] + 1, before[1] + 1), "exactly one message, the declared one"
    [(_, fields)] = broker.xrevrange("messages:live", count=1)
    assert orjson.loads(fields[b"frame"])["payload"] == {"a": 1}


def test_declared_length_cutting_the_json_short_is_a_json_error(stack: Stack, unchanged: None) -> None:
    status, headers, body = raw_http(ingest_port(stack), post(length=3, body=b'{"a": 1}'))
    assert_json_error(status, headers, body, 400, "malformed_json")


FRAMING_ERRORS = {
    "negative length": (post(length=-5, body=b'{"a": 1}'), 400),
    "non-numeric length": (post(headers="Content-Length: 8x\r\n", length=8, body=b'{"a": 1}'), 400),
    "two different lengths": (post(headers="Content-Length: 9\r\n", length=8, body=b'{"a": 1}'), 400),
    "length and chunked": (
        post(headers="Transfer-Encoding: chunked\r\n", length=13, body=b'8\r\n{"a": 1}\r\n0\r\n\r\n'),
        400,
    ),
    "NUL in a header": (post(headers="X-Note: a\x00b\r\n", body=b'{"a": 1}'), 400),
    "request line over 4 KiB": (post(path="/dummy?" + "a" * 5000, body=b'{"a": 1}'), 414),
}


def test_http_framing_errors_are_json_errors_and_change_nothing(stack: Stack, unchanged: None) -> None:
    """Requests gunicorn rejects before the app sees them: still a 4xx, still the JSON error shape."""
    not_json = {}
    for name, (data, expected) in FRAMING_ERRORS.items():
        status, headers, body = raw_http(ingest_port(stack), data)
        assert status == expected, (name, status, body[:200])
        if not headers.get("content-type", "").startswith("application/json"):
            not_json[name] = f"{headers.get('content-type')}: {body[:80]!r}"
    assert not not_json, f"non-JSON error answers: {not_json}"


def test_chunked_body_over_the_limit_is_413_and_truncated_chunks_are_400(stack: Stack, unchanged: None) -> None:
    chunked = "Transfer-Encoding: chunked\r\n"
    head = f"POST /dummy HTTP/1.1\r\nHost: test\r\n{JSON_TYPE}{chunked}\r\n".encode()
    chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
    status, headers, body = raw_http(ingest_port(stack), head + chunk * 2 + b"0\r\n\r\n")
    assert_json_error(status, headers, body, 413, "too_large")
    status, headers, body = raw_http(ingest_port(stack), head + b'100\r\n{"a": 1}')
    assert_json_error(status, headers, body, 400)


def chunked(path: str, *chunks: bytes, end: bytes = b"0\r\n\r\n") -> bytes:
    """A chunked request whose body is ``chunks``, each framed with its hex size, then ``end``."""
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\n{JSON_TYPE}Transfer-Encoding: chunked\r\n\r\n".encode()
    return head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + end


def full_batch(limit: int) -> bytes:
    """A valid JSON array of objects exactly ``limit`` bytes long."""
    element = b'{"pad": "' + b"x" * 9000 + b'"}'
    count = limit // (len(element) + 1)
    body = b"[" + b",".join([element] * count)
    filler = limit - len(body) - len(b',{"pad": ""}]')
    return body + b',{"pad": "' + b"y" * filler + b'"}]'


@pytest.mark.parametrize(
    "tail", [b', {"more": 1}]', b" " * 2_000_000], ids=["more-json-after-a-full-array", "whitespace-after-it"]
)
def test_chunked_body_past_the_limit_is_413_never_cut_to_fit(stack: Stack, unchanged: None, tail: bytes) -> None:
    """Werkzeug stops a chunked stream at the limit: the API must see the excess, not parse a cut body."""
    limit = 8 * 1024 * 1024  # MAX_BATCH_BYTES
    body = full_batch(limit)
    assert len(body) == limit and orjson.loads(body)
    if tail.startswith(b","):
        body = body[:-1] + tail  # replace the closing bracket: still one array, longer than the limit
    else:
        body += tail
    pieces = [body[i : i + 1_000_000] for i in range(0, len(body), 1_000_000)]
    status, headers, answer = raw_http(ingest_port(stack), chunked("/dummy/batch", *pieces))
    assert_json_error(status, headers, answer, 413, "too_large")


def test_chunked_body_at_the_limit_is_accepted_whole(stack: Stack, broker: redis.Redis) -> None:
    before = broker.hlen("persist:pending:records")
    body = full_batch(8 * 1024 * 1024)
    pieces = [body[i : i + 1_000_000] for i in range(0, len(body), 1_000_000)]
    status, _, answer = raw_http(ingest_port(stack), chunked("/dummy/batch", *pieces))
    assert status == 202, answer[:300]
    assert broker.hlen("persist:pending:records") - before == len(orjson.loads(answer)["ids"]) == body.count(b"pad")


MALFORMED_CHUNKS = {
    "chunk size zz": chunked("/dummy", end=b"zz\r\n{}\r\n0\r\n\r\n"),
    "100 KB chunk extension": chunked("/dummy", end=b"2;" + b"e" * 100_000 + b"\r\n{}\r\n0\r\n\r\n"),
    "bad trailer": chunked("/dummy", b"{}", end=b"0\r\nno colon here\r\n\r\n"),
    "missing chunk terminator": chunked("/dummy", end=b"2\r\n{}XX0\r\n\r\n"),
}


@pytest.mark.parametrize("data", MALFORMED_CHUNKS.values(), ids=MALFORMED_CHUNKS.keys())
def test_malformed_chunked_framing_is_a_400_json_error(stack: Stack, unchanged: None, data: bytes) -> None:
    """Answered 400, never 500. When the client is still sending past the broken framing, the
    server's close resets the connection and can destroy the answer in flight (gunicorn's async
    workers do not linger): then the app's access line must show the 400 was sent."""
    service = stack.services["ingestion_api"]
    answered = '"message":"POST /dummy 400"'
    logged_before = service.log().count(answered)
    try:
        status, headers, body = raw_http(ingest_port(stack), data)
    except ConnectionResetError:
        wait_until(lambda: service.log().count(answered) > logged_before, 5, what="the 400 in the access log")
    else:
        assert_json_error(status, headers, body, 400, ("incomplete_body", "malformed_body"))
    assert '"message":"POST /dummy 500"' not in service.log()


# --- Body content -----------------------------------------------------------------------------------

BAD_BODIES = [
    (b'{"n": 1e400}', "malformed_json"),
    (b'{"n": -1e400}', "malformed_json"),
    (b'{"n": ' + b"9" * 400 + b"}", "malformed_json"),
    (b'{"n": NaN}', "malformed_json"),
    (b'{"n": Infinity}', "malformed_json"),
    (b'{"a": "x\x00y"}', "malformed_json"),  # a raw NUL inside a string is a control character
    (b'{"a": 1}\x00', "malformed_json"),
    (b'{"a": "\xff"}', "invalid_utf8"),
    (b'{"a": "\xc0\xaf"}', "invalid_utf8"),  # overlong "/"
    (b'{"a": "\xed\xa0\x80"}', "invalid_utf8"),  # a surrogate encoded as UTF-8 (CESU-8)
    (b'{"a": "\\ud800"}', "invalid_utf8"),  # a lone surrogate escape
    (b"\xef\xbb\xbf" + b'{"a": 1}', ("invalid_utf8", "malformed_json")),  # JSON has no byte order mark
    (b'{"a": ' * 1025 + b"1" + b"}" * 1025, "too_deep"),
    (b"[" * 30_000 + b"]" * 30_000, "too_deep"),
]


@pytest.mark.parametrize(("data", "code"), BAD_BODIES, ids=lambda v: v if isinstance(v, str) else None)
def test_bad_bodies_get_a_json_error_and_change_nothing(
    stack: Stack, unchanged: None, data: bytes, code: str | tuple[str, ...]
) -> None:
    for path, body in (("/dummy", data), ("/dummy/batch", b"[" + data + b"]")):
        status, headers, answer = raw_http(ingest_port(stack), post(path, body=body))
        assert_json_error(status, headers, answer, 400, code)


def test_oversized_body_and_batch_are_413_json_errors(stack: Stack, unchanged: None) -> None:
    message = b'{"pad": "' + b"x" * (65_537 - 11) + b'"}'
    assert len(message) == 65_537
    status, headers, body = raw_http(ingest_port(stack), post(body=message))
    assert_json_error(status, headers, body, 413, "too_large")
    element = b'{"pad": "' + b"x" * 8100 + b'"}'
    batch = b"[" + b",".join([element] * 1040) + b"]"  # over 8 MiB in fewer than 1,000 messages
    assert len(batch) > 8_388_608
    status, headers, body = raw_http(ingest_port(stack), post("/dummy/batch", body=batch))
    assert_json_error(status, headers, body, 413, "too_large")
    status, headers, body = raw_http(ingest_port(stack), post(length=10**12, body=b"{}"))
    assert_json_error(status, headers, body, 413, "too_large")
    too_many = b"[" + b",".join([b"{}"] * 1001) + b"]"
    status, headers, body = raw_http(ingest_port(stack), post("/dummy/batch", body=too_many))
    assert_json_error(status, headers, body, 400, "bad_batch_size")


ODD_PAYLOADS = {
    "huge integer": (b'{"n": 18446744073709551617}', {"n": 1.8446744073709552e19}),
    "huge negative": (b'{"n": -9223372036854775809}', {"n": -9.223372036854776e18}),
    "largest double": (b'{"n": 1.7976931348623157e308}', {"n": 1.7976931348623157e308}),
    "underflow": (b'{"n": 1e-400}', {"n": 0.0}),
    "duplicate keys": (b'{"a": 1, "b": 2, "a": 3}', {"a": 3, "b": 2}),
    "NUL escapes": (b'{"a": "x\\u0000y", "\\u0000": "\\u0000"}', {"a": "x\x00y", "\x00": "\x00"}),
    "unicode": ('{"a": "héllo 🎉 \u2028 \\ud83d\\ude00"}'.encode(), {"a": "héllo 🎉 \u2028 😀"}),
    "exactly the size limit": (b'{"pad": "' + b"x" * (65_536 - 11) + b'"}', {"pad": "x" * (65_536 - 11)}),
}


def test_every_nesting_depth_up_to_254_is_accepted_and_deeper_is_too_deep(stack: Stack) -> None:
    """The README's limit is 254 levels (what orjson serializes): no depth may end in a 500."""
    answers = {}
    for depth in (2, 254, 255, 256, 512, 1024, 1025):
        body = b'{"a": ' * (depth - 1) + b"[]" + b"}" * (depth - 1)
        status, _, answer = raw_http(ingest_port(stack), post(body=body))
        answers[depth] = (status, orjson.loads(answer).get("error"))
    expected = {depth: (202, None) for depth in (2, 254)} | {
        depth: (400, "too_deep") for depth in (255, 256, 512, 1024, 1025)
    }
    assert answers == expected


def test_odd_but_valid_payloads_are_stored_and_delivered_as_documented(stack: Stack, broker) -> None:
    """Huge numbers, duplicate keys, NUL, 1024 levels, the exact size limit: 202, then listed exactly once."""
    ids = {}
    for name, (data, _) in ODD_PAYLOADS.items():
        status, _, body = raw_http(ingest_port(stack), post(body=data))
        assert status == 202, (name, body)
        ids[name] = orjson.loads(body)["id"]
    frames = {orjson.loads(f[b"frame"])["id"]: f[b"frame"] for _, f in broker.xrevrange("messages:live", count=50)}
    worker = start_worker(stack)
    try:
        wait_until(lambda: set(ids.values()) <= {m["id"] for m in stack.listed()}, timeout=60, what="stored")
    finally:
        worker.stop()
    listed = [m for m in stack.listed() if m["id"] in ids.values()]
    assert len(listed) == len(ids), "a message was stored twice"
    by_id = {m["id"]: m["payload"] for m in listed}
    for name, (_, expected) in ODD_PAYLOADS.items():
        assert by_id[ids[name]] == expected, name
        assert orjson.loads(frames[ids[name]])["payload"] == expected, f"live frame of {name}"


def test_a_batch_element_the_database_cannot_hold_is_not_accepted(
    mysql_url: str, tmp_path: Path, log_dir: Path
) -> None:
    """A 202 promises storage: a batch of one ~8 MiB object whose stored JSON outgrows MariaDB must be refused.

    ``1E5`` is 3 bytes in the request and ``100000.0`` (8) once stored, so
    the stored text can be well over twice the accepted body.
    """
    clear_database(mysql_url)
    element = b'{"n": [' + b",".join([b"1E5"] * 2_000_000) + b"]}"
    assert len(element) < 8_388_608
    server = RedisServer(tmp_path / "redis").start()  # its own, so its worker takes nothing of the module's
    redis_url = server.url
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(server.stop)
        stack = cleanup.enter_context(running_stack(mysql_url, redis_url, log_dir))
        response = requests.post(
            f"{stack.ingest_url}/dummy/batch",
            data=b"[" + element + b"]",
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        if response.status_code != 202:
            assert_json_error(response.status_code, {"content-type": response.headers["Content-Type"]},
                              response.content, response.status_code)  # fmt: skip
            assert 400 <= response.status_code < 500
            return
        [message_id] = response.json()["ids"]
        with contextlib.suppress(AssertionError):
            wait_until(lambda: requests.get(f"{stack.list_url}/messages/{message_id}", timeout=10).ok, timeout=30)
        dead = redis.Redis.from_url(redis_url).llen("dead_letters")
        stored = requests.get(f"{stack.list_url}/messages/{message_id}", timeout=10)
        assert stored.status_code == 200, f"accepted with 202 but not stored ({dead} dead letter(s))"


# --- Slow clients -----------------------------------------------------------------------------------


@pytest.mark.parametrize("slow_clients", [4, 24, 200])
def test_slow_uploads_do_not_stop_others_from_being_served(stack: Stack, slow_clients: int) -> None:
    """Clients trickle their bodies a byte at a time; a normal client is still answered within 2 s.

    Each upload in progress is a greenlet of gunicorn's gevent workers, not a thread, so even
    far more slow uploads than any thread pool would hold leave the API serving others (in
    production nginx also buffers bodies, deploy/nginx.conf). docs/operations.md.
    """
    port = ingest_port(stack)
    tricklers: list[socket.socket] = []
    body = b'{"slow": "' + b"x" * 200 + b'"}'
    done = threading.Event()

    def trickle() -> None:
        for byte in range(1, len(body) - 1):  # never the last byte: the uploads stay unfinished
            if done.wait(0.25):
                return
            for sock in tricklers:
                with contextlib.suppress(OSError):
                    sock.sendall(body[byte : byte + 1])

    try:
        for _ in range(slow_clients):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(post(length=len(body)) + body[:1])
            tricklers.append(sock)
        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(0.5)
        started = time.monotonic()
        try:
            response = requests.post(f"{stack.ingest_url}/dummy", json={"normal": True}, timeout=10)
            status = response.status_code
        except requests.RequestException as exc:
            status = type(exc).__name__
        elapsed = time.monotonic() - started
        print(f"\nnormal POST with {slow_clients} slow uploads in progress: {status} after {elapsed:.1f}s")
        assert status == 202 and elapsed < 2.0, f"a normal POST got {status} after {elapsed:.1f}s"
    finally:
        done.set()
        for sock in tricklers:
            sock.close()
        wait_until(lambda: requests.get(f"{stack.ingest_url}/healthz", timeout=2).ok, timeout=60, what="API free")


# --- List API ---------------------------------------------------------------------------------------

BAD_QUERIES = [
    ("/messages?limit=99999999999999999999999", 400),
    ("/messages?limit=%00", 400),
    ("/messages?limit=-1", 400),
    ("/messages?order=%ff", 400),
    ("/messages?cursor=%00", 400),
    ("/messages?cursor=" + "A" * 3000, 400),
    ("/messages?cursor=1&cursor=2", 400),
    ("/messages?limit=1&limit=2&surprise=1", 400),
    ("/messages/%00", 404),
    ("/messages/" + "0" * 3000, 404),
    ("/messages/..%2f..%2fetc%2fpasswd", 404),
]


@pytest.mark.parametrize(("path", "status"), BAD_QUERIES)
def test_list_api_bad_queries_are_json_errors(stack: Stack, path: str, status: int) -> None:
    port = int(stack.list_url.rsplit(":", 1)[1])
    code, headers, body = raw_http(port, f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    assert_json_error(code, headers, body, status)


# --- Websocket server -------------------------------------------------------------------------------


HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def raw_ws(port: int) -> socket.socket:
    """A websocket connection made by hand: handshake done, nothing read after the 101."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(HANDSHAKE)
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        assert chunk, "closed during the handshake"
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 101"), answer[:100]
    return sock


def client_frame(opcode: int, payload: bytes, fin: bool = True, declared: int | None = None) -> bytes:
    """A masked client frame; ``declared`` lies about the payload length."""
    length = len(payload) if declared is None else declared
    head = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 2**16:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    mask = b"\x01\x02\x03\x04"
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close_code(sock: socket.socket) -> int | None:
    """Read server frames until a close frame; return its code (None if the connection just ends)."""
    sock.settimeout(10)
    buffer = b""
    while True:
        header = _frame_header(buffer)
        if header is not None and len(buffer) >= header[0] + header[1]:
            start, length = header
            opcode, payload = buffer[0] & 0x0F, buffer[start : start + length]
            buffer = buffer[start + length :]
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            continue
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk


def _frame_header(buffer: bytes) -> tuple[int, int] | None:
    """Where an unmasked server frame's payload starts, and its length; None until the header is complete."""
    if len(buffer) < 2:
        return None
    length = buffer[1] & 0x7F
    if length == 126:
        return (4, struct.unpack("!H", buffer[2:4])[0]) if len(buffer) >= 4 else None
    if length == 127:
        return (10, struct.unpack("!Q", buffer[2:10])[0]) if len(buffer) >= 10 else None
    return 2, length


WS_BAD_FRAMES = {
    "one byte over the limit": ([client_frame(0x1, b"x" * 4097)], 1009),
    "a huge declared length": ([client_frame(0x2, b"", declared=2**62)], 1009),
    "fragments adding up past the limit": (
        [client_frame(0x1, b"x" * 3000, fin=False), client_frame(0x0, b"y" * 3000)],
        1009,
    ),
    "a small text frame": ([client_frame(0x1, b"hello")], 1003),
    "a small binary frame": ([client_frame(0x2, b"\x00\xff")], 1003),
}


@pytest.mark.parametrize("case", WS_BAD_FRAMES)
def test_client_frames_close_the_connection_with_the_right_code(stack: Stack, case: str) -> None:
    frames, expected = WS_BAD_FRAMES[case]
    sock = raw_ws(stack.ws_port)
    try:
        for frame in frames:
            sock.sendall(frame)
        assert close_code(sock) == expected
    finally:
        sock.close()
    assert requests.get(f"http://127.0.0.1:{stack.ws_port}/healthz", timeout=5).ok


def test_resume_with_a_garbage_after_id_gets_a_reset_then_live(stack: Stack) -> None:
    async def scenario() -> None:
        for after in ("x" * 3000, "%00", "%ff%fe", quote("'; DROP TABLE messages; --")):
            async with connect(f"{stack.ws_url}/?after={after}") as ws:
                first = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                assert first["type"] == "reset", first
                assert orjson.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "ready"}
        with pytest.raises(InvalidHandshake):  # a request line over the HTTP parser's limit: 414 or a close
            await connect(f"{stack.ws_url}/?after={'x' * 20_000}")

    asyncio.run(scenario())
    assert requests.get(f"http://127.0.0.1:{stack.ws_port}/healthz", timeout=5).ok


def test_thousands_of_idle_connections_leave_the_wsserver_responsive(stack: Stack) -> None:
    """2,000 idle websocket clients plus 200 stalled handshakes; a normal client still gets every message."""
    process = psutil.Process(stack.services["wsserver"].process.pid)
    idle: list[socket.socket] = []
    stalled: list[socket.socket] = []
    try:
        idle = [raw_ws(stack.ws_port) for _ in range(2000)]
        stalled = [_stalled_handshake(stack.ws_port) for _ in range(200)]
        # The server should hold every connection open (accepting the last of them may take a moment).
        wait_until(lambda: process.num_fds() >= 2200, timeout=15, what="the server holding every connection")

        async def scenario() -> float:
            started = time.monotonic()
            async with connect(f"{stack.ws_url}/") as ws:
                assert orjson.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "ready"}
                connected = time.monotonic() - started
                ids = []
                for i in range(20):
                    answer = await asyncio.to_thread(
                        requests.post, f"{stack.ingest_url}/dummy", json={"i": i}, timeout=5
                    )
                    assert answer.status_code == 202
                    ids.append(answer.json()["id"])
                assert [orjson.loads(await asyncio.wait_for(ws.recv(), 10))["id"] for _ in ids] == ids
            return connected

        connected = asyncio.run(scenario())
        assert requests.get(f"http://127.0.0.1:{stack.ws_port}/healthz", timeout=5).status_code == 200
        print(f"\nwith 2,000 idle and 200 stalled connections a new client was live in {connected * 1000:.0f} ms")
        assert connected < 1.0
    finally:
        for sock in idle + stalled:
            sock.close()


def _stalled_handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(HANDSHAKE[:40])
    return sock


def test_normal_clients_still_work_after_the_abuse(stack: Stack) -> None:
    """Run last: the servers survived everything above."""
    assert requests.get(f"{stack.ingest_url}/healthz", timeout=5).ok
    assert requests.post(f"{stack.ingest_url}/dummy", json={"after": "abuse"}, timeout=5).status_code == 202

    async def scenario() -> None:
        async with connect(f"{stack.ws_url}/") as ws:
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "ready"}
            await ws.send("x" * 5000)
            with pytest.raises(ConnectionClosed) as info:
                # The message posted above may still come live (the server's read of it can follow this join).
                while True:
                    assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["payload"] == {"after": "abuse"}
            assert info.value.rcvd.code == 1009

    asyncio.run(scenario())
