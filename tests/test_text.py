"""Text that UTF-8 cannot carry, or that would forge a log line: refused or escaped at the door.

JSON escapes lone UTF-16 surrogates (`"\\ud800"`), which JavaScript leaves when it cuts a
string inside an emoji; pyjwt's json keeps them in a token's claims, and Sanic turns request
bytes that are not UTF-8 into them. Header texts of a token are unsigned and quoted by pyjwt.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bifrost.rules.text import MAX_REASON_LENGTH, is_utf8_text, printable, without_query_tokens
from tests.clients import authenticated, post_broadcast, receive_json
from tests.live import SECRET, BifrostServer, broadcast_token, subscribe_token
from tests.redis_server import RedisServer

HALF_EMOJI = "😀".encode("utf-16-le")[:2].decode("utf-16-le", "surrogatepass")  # "\ud83d"
NOT_UTF8 = (
    "holds a lone UTF-16 surrogate (as left by cutting a string inside an emoji), "
    "which UTF-8 cannot carry"
)
FORGED = "2026-01-01 00:00:00,000 ERROR bifrost: forged line"


async def closed_with(ws: ClientConnection, timeout: float = 5.0) -> tuple[int | None, str | None]:
    """Wait until the server closes the socket; its close code and reason."""
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    return ws.close_code, ws.close_reason


async def assert_nothing_more(ws: ClientConnection) -> None:
    """The next frame is the pong to a ping sent now: no other frame was on its way."""
    await ws.send('{"event":"ping"}')
    assert await receive_json(ws) == {"event": "pong"}


def raw_request(live: BifrostServer, head: bytes) -> tuple[int, dict[str, str]]:
    """Send request bytes no HTTP client would send; the status and JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", live.port), timeout=5) as sock:
        sock.sendall(head + b"\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def forged_header_token(claims: dict[str, object], forged: str = FORGED) -> str:
    """A token whose unsigned header names a `crit` extension holding a line break and a
    terminal escape: pyjwt quotes it in the reason it rejects the token with."""
    return jwt.encode(claims, SECRET, "HS512", headers={"crit": [f"x\n{forged}\x1b[2J"]})


def test_printable_escapes_what_would_break_a_line_and_bounds_length():
    """Control and format characters and lone surrogates are escaped; long text is cut."""
    assert printable("plain: ü 😀") == "plain: ü 😀"
    assert printable("a\nb\r\x1b[31m\u2028\u202e\ud800\x00") == (
        "a\\nb\\r\\x1b[31m\\u2028\\u202e\\ud800\\x00"
    )
    cut = printable("x" * 1000)
    assert len(cut) == MAX_REASON_LENGTH and cut.endswith("…")
    assert len(printable("\n" * 1000)) == MAX_REASON_LENGTH
    assert printable("y" * MAX_REASON_LENGTH) == "y" * MAX_REASON_LENGTH
    assert is_utf8_text(printable(HALF_EMOJI))


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        (
            "GET http://h/subscribe?token=eyJ.a.b&since=x 401",
            "GET http://h/subscribe?token=[redacted]&since=x 401",
        ),
        ("GET /subscribe?since=x&%74oken=eyJ.a.b", "GET /subscribe?since=x&%74oken=[redacted]"),
        ("uri: 'http://h/s?token=t'", "uri: 'http://h/s?token=[redacted]'"),
        ("GET /test?channel=room", "GET /test?channel=room"),
        ("GET /subscribe?tokens=x&atoken=y", "GET /subscribe?tokens=x&atoken=y"),
        ("what? no query", "what? no query"),
    ],
)
def test_a_token_in_a_quoted_query_is_redacted(line: str, shown: str):
    """The value of `token`, however its name is escaped, never reaches a log line."""
    assert without_query_tokens(line) == shown


def test_is_utf8_text_refuses_lone_surrogates_only():
    """Any text UTF-8 can carry passes, a lone surrogate of either half does not."""
    assert is_utf8_text("user:1") and is_utf8_text("ü😀\n")
    assert not is_utf8_text(HALF_EMOJI) and not is_utf8_text("ok\udc00")


async def test_subscribe_token_with_surrogate_channel_closes_1008_others_unharmed(
    server: BifrostServer,
):
    """A channel name UTF-8 cannot carry closes 1008 `Not Authorized`; others still hear."""
    healthy = await authenticated(server, ["text:healthy"])
    async with connect(server.ws_url) as ws:
        token = subscribe_token(["text:fine", f"cut {HALF_EMOJI}"])
        await ws.send(json.dumps({"event": "authenticate", "data": token}))
        assert await closed_with(ws) == (1008, "Not Authorized")
    token = broadcast_token({"event": "still", "data": 1}, channel="text:healthy")
    assert (await post_broadcast(server, token)).json()["deliveries"] == 1
    assert await receive_json(healthy) == {"event": "still", "data": 1}
    await healthy.close()
    assert f"authentication failed for 127.0.0.1: a channel of channels {NOT_UTF8}" in server.log()


@pytest.mark.parametrize(
    "message",
    [
        {"event": "chat", "data": f"cut {HALF_EMOJI}"},
        {"event": "chat", "data": {f"key {HALF_EMOJI}": 1}},
        {"event": "chat", "data": [{"deep": [1, {"deeper": HALF_EMOJI}]}]},
        {"event": HALF_EMOJI},
    ],
    ids=["value", "key", "nested", "event"],
)
async def test_broadcast_message_with_surrogate_is_400_and_not_delivered(
    server: BifrostServer, message: dict[str, object]
):
    """A message holding text UTF-8 cannot carry, anywhere, gets 400 saying so, never a 500."""
    ws = await authenticated(server, ["text:chat"])
    response = await post_broadcast(server, broadcast_token(message, channel="text:chat"))
    assert response.status_code == 400
    assert response.json() == {"error": f"message {NOT_UTF8}"}
    await assert_nothing_more(ws)
    await ws.close()


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"channel": f"cut {HALF_EMOJI}"}, f"channel {NOT_UTF8}"),
        ({"channels": ["text:ok", HALF_EMOJI]}, f"a channel of channels {NOT_UTF8}"),
    ],
    ids=["channel", "channels"],
)
async def test_broadcast_channel_with_surrogate_is_400(
    server: BifrostServer, claims: dict[str, object], reason: str
):
    """A broadcast to a channel name UTF-8 cannot carry gets 400 saying so."""
    token = broadcast_token({"event": "e"}, **claims)  # type: ignore[arg-type]
    response = await post_broadcast(server, token)
    assert (response.status_code, response.json()) == (400, {"error": reason})


async def test_message_beyond_orjson_is_still_delivered_as_sent(server: BifrostServer):
    """Integers beyond 64 bits and nesting beyond 255 levels, valid JSON, are still carried."""
    ws = await authenticated(server, ["text:big"])
    deep: object = "bottom"
    for _ in range(300):
        deep = [deep]
    message = {"event": "big", "data": {"n": 2**70, "deep": deep}}
    response = await post_broadcast(server, broadcast_token(message, channel="text:big"))
    assert response.json() == {"message": "Success", "deliveries": 1}
    assert await receive_json(ws) == message
    await ws.close()


async def test_forged_header_reaches_no_log_line_and_no_answer(start_server):
    """A token header's line break and escape sequence are escaped in the log and the answer."""
    live = start_server(name="text-forged")
    async with connect(live.ws_url) as ws:
        token = forged_header_token({"channels": ["a"]})
        await ws.send(json.dumps({"event": "authenticate", "data": token}))
        assert await closed_with(ws) == (1008, "Not Authorized")
    token = forged_header_token({"message": {"event": "e"}, "channel": "a", "exp": 4_000_000_000})
    response = await post_broadcast(live, token)
    assert response.status_code == 400
    reason = response.json()["error"]
    assert reason == f"invalid token: Unsupported critical extension: x\\n{FORGED}\\x1b[2J"
    long_token = forged_header_token({"channels": ["a"]}, forged="y" * 5000)
    response = await post_broadcast(live, long_token)
    assert len(response.json()["error"]) == MAX_REASON_LENGTH
    live.stop()
    log = live.log()
    assert not [line for line in log.splitlines() if line.startswith(FORGED)], log
    assert "\x1b" not in log
    assert f"authentication failed for 127.0.0.1: {reason}" in log
    assert f"broadcast refused for 127.0.0.1: {reason}" in log


async def test_header_bytes_that_are_not_text_get_a_clear_answer_and_log_line(start_server):
    """Header bytes no websocket header holds: 403 or 400 saying why, one JSON log line; in a
    header the handshake does not read, they do not stop it."""
    env = {"BIFROST_ALLOWED_ORIGINS": "https://app.example.com", "BIFROST_LOG_FORMAT": "json"}
    live = start_server(env, name="text-headers")
    upgrade = (
        b"GET /subscribe HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
    )
    key = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    status, body = raw_request(live, upgrade + key + b"Origin: https://\xff\x1b")
    assert (status, body) == (403, {"error": "Origin not allowed"})
    status, body = raw_request(live, upgrade + b"Sec-WebSocket-Key: \xff\x1b[2J")
    assert status == 400
    assert body == {
        "error": "Failed to open a WebSocket connection: "
        "invalid sec-websocket-key header: \\udcff\\x1b[2J"
    }
    with socket.create_connection(("127.0.0.1", live.port), timeout=5) as sock:
        sock.sendall(upgrade + key + "Cookie: name=José €\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 101 ")
    live.stop()
    lines = [json.loads(line) for line in live.log().splitlines() if line.startswith("{")]
    refusals = [line["message"] for line in lines if "refused handshake" in line["message"]]
    assert refusals == ["refused handshake from origin https://\\udcff\\x1b"]
    assert "Logging error" not in live.log()


@pytest.mark.parametrize(
    ("head", "status", "reason"),
    [
        (b"POST /broadcast HTTP/1.1\r\nContent-Length: 0\r\nExpect: \xff\x1b[2J", 417,
         "Unknown Expect: \\udcff\\x1b[2J"),
        (b"P\xffST /broadcast HTTP/1.1", 405, "Method P\\udcffST not allowed for URL /broadcast"),
    ],
    ids=["expect", "method"],
)  # fmt: skip
def test_sanic_errors_quoting_bytes_not_utf8_are_json_not_500(
    server: BifrostServer, head: bytes, status: int, reason: str
):
    """An HTTP error whose reason quotes request bytes that are not UTF-8 is JSON, escaped."""
    assert raw_request(server, head + b"\r\nHost: x\r\nConnection: close") == (
        status,
        {"error": reason},
    )


async def test_surrogate_channel_through_redis_harms_no_other_subscriber(
    redis_server: RedisServer, start_server: Callable[..., BifrostServer]
):
    """With Redis, a channel name UTF-8 cannot carry is refused; the worker's other
    subscribers keep receiving through a Redis restart, and broadcasts are never 503."""
    live = start_server({"BIFROST_REDIS_URL": redis_server.url}, name="text-redis")
    healthy = await authenticated(live, ["text:healthy"])
    async with connect(live.ws_url) as ws:
        token = subscribe_token(["text:healthy", HALF_EMOJI])
        await ws.send(json.dumps({"event": "authenticate", "data": token}))
        assert await closed_with(ws) == (1008, "Not Authorized")
    response = await post_broadcast(live, broadcast_token({"event": "e"}, channel=HALF_EMOJI))
    assert (response.status_code, response.json()) == (400, {"error": f"channel {NOT_UTF8}"})
    redis_server.stop()
    redis_server.start()
    deadline = asyncio.get_running_loop().time() + 10
    while httpx.get(f"{live.url}/readyz").status_code != 200:
        assert asyncio.get_running_loop().time() < deadline, "not ready after Redis came back"
        await asyncio.sleep(0.1)
    token = broadcast_token({"event": "after restart"}, channel="text:healthy")
    response = await post_broadcast(live, token)
    assert (response.status_code, response.json()) == (200, {"message": "Success", "deliveries": 1})
    assert await receive_json(healthy) == {"event": "after restart"}
    await healthy.close()
