"""`GET /subscribe` against a live server: one test per row and rule of the contract."""

from __future__ import annotations

import asyncio
import json

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.clients import authenticated, post_broadcast, receive_json
from tests.live import SECRET, BifrostServer, broadcast_token, subscribe_token


async def closed_with(ws, timeout: float = 5.0) -> tuple[int | None, str | None]:
    """Wait until the server closes the socket; its close code and reason."""
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    assert ws.close_code is not None
    return ws.close_code, ws.close_reason


async def test_authenticate_replies_subscribed_per_channel_in_order_once(server: BifrostServer):
    """Authenticating replies one `subscribed` frame per channel, in order, duplicates once."""
    async with connect(server.ws_url) as ws:
        token = subscribe_token(["user:1", "global", "user:1"])
        await ws.send(json.dumps({"event": "authenticate", "data": token}))
        first, second = await ws.recv(), await ws.recv()
        assert first == '{"event":"subscribed","data":"{\\"channel\\":\\"user:1\\"}"}'
        assert json.loads(json.loads(second)["data"]) == {"channel": "global"}
        await ws.send('{"event":"ping"}')
        assert await receive_json(ws) == {"event": "pong"}


async def test_subscribed_data_is_a_json_encoded_string(server: BifrostServer):
    """The `data` of `subscribed` is a string the README's client parses with JSON.parse."""
    async with connect(server.ws_url) as ws:
        await ws.send(json.dumps({"event": "authenticate", "data": subscribe_token(["a"])}))
        frame = await receive_json(ws)
        assert isinstance(frame["data"], str)
        assert json.loads(frame["data"])["channel"] == "a"


async def test_later_authenticate_adds_channels(server: BifrostServer):
    """A second authenticate adds its channels to those the socket already hears."""
    ws = await authenticated(server, ["first-room"])
    async with ws:
        await ws.send(json.dumps({"event": "authenticate", "data": subscribe_token(["second"])}))
        assert json.loads((await receive_json(ws))["data"]) == {"channel": "second"}
        for channel in ("first-room", "second"):
            token = broadcast_token({"event": "hi", "data": channel}, channel=channel)
            assert (await post_broadcast(server, token)).json()["deliveries"] == 1
            assert await receive_json(ws) == {"event": "hi", "data": channel}


async def test_ping_gets_pong(server: BifrostServer):
    """`{"event":"ping"}` is answered `{"event":"pong"}`, before and after authenticating."""
    async with connect(server.ws_url) as ws:
        await ws.send('{"event":"ping"}')
        assert await ws.recv() == '{"event":"pong"}'


async def test_other_events_are_ignored(server: BifrostServer):
    """Any other event gets no reply and leaves the socket open."""
    async with connect(server.ws_url) as ws:
        await ws.send('{"event":"typing","data":{"x":1}}')
        await ws.send('{"event":"ping"}')
        assert await receive_json(ws) == {"event": "pong"}


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("not json", "frame is not valid JSON"),
        ("[1, 2]", "frame must be a JSON object"),
        ('"authenticate"', "frame must be a JSON object"),
        ('{"data": 1}', "frame must have a string event"),
        ('{"event": 5}', "frame must have a string event"),
    ],
)
async def test_malformed_frame_gets_error_and_socket_stays_open(
    server: BifrostServer, frame: str, reason: str
):
    """A frame that is not a JSON object with a string event gets an `error` reply."""
    async with connect(server.ws_url) as ws:
        await ws.send(frame)
        reply = await receive_json(ws)
        assert reply["event"] == "error"
        assert json.loads(reply["data"]) == {"error": reason}
        await ws.send('{"event":"ping"}')
        assert await receive_json(ws) == {"event": "pong"}


async def test_binary_frame_closes_1003(server: BifrostServer):
    """A binary frame closes the socket with 1003."""
    async with connect(server.ws_url) as ws:
        await ws.send(b'{"event":"ping"}')
        code, _ = await closed_with(ws)
        assert code == 1003


async def test_oversized_frame_closes_1009(server: BifrostServer):
    """A frame over BIFROST_MAX_FRAME_BYTES closes the socket with 1009."""
    async with connect(server.ws_url) as ws:
        await ws.send(json.dumps({"event": "typing", "data": "x" * 5000}))
        code, _ = await closed_with(ws)
        assert code == 1009


def _token_variants() -> dict[str, object]:
    hs256 = jwt.encode({"channels": ["a"]}, SECRET, "HS256")
    _header, payload, _ = jwt.encode({"channels": ["a"]}, SECRET, "HS512").split(".")
    unsigned_header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    return {
        "wrong secret": subscribe_token(["a"], secret="another-secret-" + "y" * 50),
        "HS256 when HS512 is pinned": hs256,
        "alg none": f"{unsigned_header}.{payload}.",
        "expired": subscribe_token(["a"], exp=1_000_000_000),
        "not yet valid": subscribe_token(["a"], nbf=4_000_000_000),
        "garbage": "not.a.token",
        "not a string": {"channels": ["a"]},
        "no channels": jwt.encode({"user": 1}, SECRET, "HS512"),
        "channels not a list": jwt.encode({"channels": "a"}, SECRET, "HS512"),
        "channels not strings": jwt.encode({"channels": ["a", 1]}, SECRET, "HS512"),
        "empty channels": subscribe_token([]),
        "too many channels": subscribe_token([f"c{i}" for i in range(101)]),
        "channel name too long": subscribe_token(["c" * 256]),
        "broadcast token": broadcast_token({"event": "x"}, channel="a"),
    }


@pytest.mark.parametrize("variant", list(_token_variants()))
async def test_bad_subscribe_token_closes_1008_not_authorized(server: BifrostServer, variant):
    """A bad, expired or wrongly-shaped subscribe token closes with 1008 `Not Authorized`."""
    token = _token_variants()[variant]
    async with connect(server.ws_url) as ws:
        await ws.send(json.dumps({"event": "authenticate", "data": token}))
        assert await closed_with(ws) == (1008, "Not Authorized")


async def test_authenticate_past_the_channel_total_is_refused_whole(start_server):
    """An authenticate that would take a socket over `BIFROST_MAX_CHANNELS` in all gets an
    `error` naming the bound, subscribes none of its channels, and leaves the socket open with
    those it had; one whose channels the socket already counts is honoured."""
    live = start_server({"BIFROST_MAX_CHANNELS": "3"})
    over = "a socket may hear at most 3 channels; this authenticate would make 4"

    async def authenticate(ws, channels: list[str], replies: int) -> list[tuple[str, object]]:
        await ws.send(json.dumps({"event": "authenticate", "data": subscribe_token(channels)}))
        frames = [await receive_json(ws) for _ in range(replies)]
        return [(frame["event"], json.loads(frame["data"])) for frame in frames]

    ws = await authenticated(live, ["a", "b"])
    async with ws:
        assert await authenticate(ws, ["c", "d"], 1) == [("error", {"error": over})]
        assert await authenticate(ws, ["b", "c"], 2) == [
            ("subscribed", {"channel": "b"}),
            ("subscribed", {"channel": "c"}),
        ]
        assert await authenticate(ws, ["d"], 1) == [("error", {"error": over})]
        for channel, deliveries in (("d", 0), ("a", 1), ("c", 1)):
            token = broadcast_token({"event": "hi", "data": channel}, channel=channel)
            assert (await post_broadcast(live, token)).json()["deliveries"] == deliveries
        assert await receive_json(ws) == {"event": "hi", "data": "a"}
        assert await receive_json(ws) == {"event": "hi", "data": "c"}
        assert live.stats()["subscriptions"] == 3


async def test_subscribe_token_without_exp_is_accepted(server: BifrostServer):
    """A subscribe token may omit `exp`, as the original README's example does."""
    ws = await authenticated(server, ["no-exp"])
    await ws.close()


async def test_subscribe_token_expiring_later_keeps_socket_open(server: BifrostServer):
    """A subscribe token's `exp` is checked when presented, not afterwards."""
    async with connect(server.ws_url) as ws:
        token = subscribe_token(["short-lived"], exp=int(__import__("time").time()) + 1)
        await ws.send(json.dumps({"event": "authenticate", "data": token}))
        await receive_json(ws)
        await asyncio.sleep(2.5)
        message = broadcast_token({"event": "still", "data": 1}, channel="short-lived")
        assert (await post_broadcast(server, message)).json()["deliveries"] == 1
        assert await receive_json(ws) == {"event": "still", "data": 1}


async def test_no_authentication_closes_1008_after_timeout(server: BifrostServer):
    """A socket silent past BIFROST_AUTH_TIMEOUT without authenticating is closed."""
    async with connect(server.ws_url) as ws:
        assert await closed_with(ws, timeout=4) == (1008, "Authentication timeout")


async def test_pinging_without_authenticating_still_times_out(server: BifrostServer):
    """Activity does not replace authentication: pings alone do not keep the socket."""
    async with connect(server.ws_url) as ws:
        with pytest.raises(ConnectionClosed):
            for _ in range(40):
                await ws.send('{"event":"ping"}')
                await receive_json(ws)
                await asyncio.sleep(0.1)
        assert (ws.close_code, ws.close_reason) == (1008, "Authentication timeout")


async def test_frame_flood_closes_1008_rate_limit(server: BifrostServer):
    """A client sending frames beyond the per-socket rate is closed with `Rate limit`."""
    ws = await authenticated(server, ["flood"])
    async with ws:
        with pytest.raises(ConnectionClosed):
            for _ in range(500):
                await ws.send('{"event":"typing"}')
            await asyncio.wait_for(ws.recv(), 5)
        assert (ws.close_code, ws.close_reason) == (1008, "Rate limit")


async def test_foreign_origin_handshake_gets_403(server: BifrostServer):
    """With BIFROST_ALLOWED_ORIGINS set, a handshake from another origin gets 403."""
    with pytest.raises(InvalidStatus) as refused:
        await connect(server.ws_url, origin="https://evil.example.net")
    assert refused.value.response.status_code == 403
    async with connect(server.ws_url, origin="https://app.example.com") as ws:
        await ws.send('{"event":"ping"}')
        assert await receive_json(ws) == {"event": "pong"}


async def test_connection_limit_answers_503_and_spares_open_sockets(start_server):
    """Past BIFROST_MAX_CONNECTIONS a handshake gets 503; the open sockets keep working."""
    live = start_server({"BIFROST_MAX_CONNECTIONS": "2"})
    first = await authenticated(live, ["full"])
    second = await authenticated(live, ["full"])
    with pytest.raises(InvalidStatus) as refused:
        await connect(live.ws_url)
    assert refused.value.response.status_code == 503
    token = broadcast_token({"event": "still-here"}, channel="full")
    assert (await post_broadcast(live, token)).json()["deliveries"] == 2
    for ws in (first, second):
        assert await receive_json(ws) == {"event": "still-here"}
        await ws.close()


async def test_connected_counts_open_sockets(server: BifrostServer):
    """`connected` in /info.json counts open websocket connections, and drops when they close."""
    before = server.stats()["connected"]
    sockets = [await authenticated(server, ["count"]) for _ in range(3)]
    assert server.stats()["connected"] == before + 3
    for ws in sockets:
        await ws.close()
    await asyncio.sleep(0.2)
    assert server.stats()["connected"] == before
