"""Positions and recovery after a reconnect, on live servers with each broker.

Every test runs on a node with the in-process broker and on nodes sharing a real
`redis-server`, unless it is about one of them only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.clients import post_broadcast, receive_json
from tests.live import BifrostServer, broadcast_token, subscribe_token
from tests.redis_server import RedisServer

HISTORY = {"BIFROST_HISTORY_SIZE": "20", "BIFROST_HISTORY_TTL": "60"}

Node = Callable[..., BifrostServer]


@pytest.fixture(params=["in-process", "redis"])
def broker(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def redis_server(broker: str, log_dir: Path) -> Iterator[RedisServer | None]:
    if broker != "redis":
        yield None
        return
    server = RedisServer(log_dir).start()
    yield server
    server.stop()


@pytest.fixture
def node(redis_server: RedisServer | None, start_server: Callable[..., BifrostServer]) -> Node:
    """Start a node with history on (or the settings given), on the test's broker."""

    def start(env: dict[str, str] | None = None, **kwargs: Any) -> BifrostServer:
        broker_env = {"BIFROST_REDIS_URL": redis_server.url} if redis_server else {}
        return start_server({**HISTORY, **broker_env, **(env or {})}, **kwargs)

    return start


class Reader:
    """A browser following the README: it keeps `since` from every frame's positions and
    sends it again on every reconnect."""

    def __init__(self, channels: list[str]) -> None:
        self.channels = channels
        self.since: dict[str, Any] = {}
        self.ws: ClientConnection | None = None
        self.subscribed: dict[str, dict[str, Any]] = {}

    async def connect(self, server: BifrostServer) -> dict[str, dict[str, Any]]:
        """Connect and authenticate with `since`; return the subscribed frames by channel."""
        self.ws = await connect(server.ws_url)
        frame = {"event": "authenticate", "data": subscribe_token(self.channels)}
        await self.ws.send(json.dumps({**frame, "since": self.since}))
        self.subscribed = {}
        for _ in self.channels:
            reply = await self.receive()
            assert reply["event"] == "subscribed", reply
            self.subscribed[json.loads(reply["data"])["channel"]] = reply
        return self.subscribed

    async def receive(self) -> dict[str, Any]:
        assert self.ws is not None
        frame: dict[str, Any] = await receive_json(self.ws)
        self.since.update(frame.get("positions", {}))
        return frame

    async def messages(self, count: int) -> list[Any]:
        """The data of the next `count` message frames."""
        return [(await self.receive())["data"] for _ in range(count)]

    async def nothing_more(self) -> None:
        assert self.ws is not None
        await self.ws.send('{"event":"ping"}')
        assert await self.receive() == {"event": "pong"}

    async def close(self) -> None:
        assert self.ws is not None
        await self.ws.close()


async def broadcast(server: BifrostServer, data: Any, *channels: str) -> dict[str, Any]:
    token = broadcast_token({"event": "note", "data": data}, channels=list(channels))
    answer = await post_broadcast(server, token)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_reconnect_gets_exactly_the_missed_messages_in_order(node: Node):
    """Messages broadcast while a socket was away arrive after its `subscribed`, in order,
    then live ones; nothing before its position comes again."""
    live = node()
    reader = Reader(["room"])
    first = await reader.connect(live)
    assert first["room"]["positions"]["room"]["offset"] == 0
    assert "recovered" not in first["room"]  # `since` named no channel
    for n in range(3):
        await broadcast(live, n, "room")
    assert await reader.messages(3) == [0, 1, 2]
    await reader.close()
    for n in range(3, 8):
        await broadcast(live, n, "room")
    again = await reader.connect(live)
    assert again["room"]["recovered"] is True
    assert again["room"]["positions"]["room"]["offset"] == 3
    assert await reader.messages(5) == [3, 4, 5, 6, 7]
    await broadcast(live, 8, "room")
    assert await reader.messages(1) == [8]
    assert reader.since["room"]["offset"] == 9
    await reader.nothing_more()
    await reader.close()


async def test_broadcast_answer_positions_are_those_subscribers_see(node: Node):
    """The application can store a message's position: it is the one sockets are given."""
    live = node()
    reader = Reader(["a", "b"])
    await reader.connect(live)
    answer = await broadcast(live, "both", "a", "b")
    assert answer["deliveries"] == 1
    frame = await reader.receive()
    assert frame == {"event": "note", "data": "both", "positions": answer["positions"]}
    assert set(answer["positions"]) == {"a", "b"}
    assert [p["offset"] for p in answer["positions"].values()] == [1, 1]
    assert answer["positions"]["a"]["epoch"] == reader.subscribed["a"]["positions"]["a"]["epoch"]
    await reader.close()


async def test_message_to_two_channels_is_recovered_once(node: Node):
    """A message broadcast to two of a socket's channels comes back once, in both orders."""
    live = node()
    reader = Reader(["left", "right"])
    await reader.connect(live)
    await reader.close()
    await broadcast(live, "left 1", "left")
    await broadcast(live, "both", "left", "right")
    await broadcast(live, "right 1", "right")
    await broadcast(live, "both again", "right", "left")
    subscribed = await reader.connect(live)
    assert {c: f["recovered"] for c, f in subscribed.items()} == {"left": True, "right": True}
    assert await reader.messages(4) == ["left 1", "both", "right 1", "both again"]
    assert reader.since["left"]["offset"] == 3 and reader.since["right"]["offset"] == 3
    await reader.nothing_more()
    await reader.close()


async def test_unpositioned_socket_frames_are_the_compat_bytes_with_history_on(node: Node):
    """A socket that never sends `since` gets exactly the original's frames."""
    live = node()
    async with connect(live.ws_url) as ws:
        await ws.send(json.dumps({"event": "authenticate", "data": subscribe_token(["plain"])}))
        assert await ws.recv() == '{"event":"subscribed","data":"{\\"channel\\":\\"plain\\"}"}'
        token = broadcast_token({"event": "e", "data": '{"x":1}'}, channel="plain")
        answer = (await post_broadcast(live, token)).json()
        assert answer["deliveries"] == 1 and answer["positions"]["plain"]["offset"] == 1
        assert await ws.recv() == '{"event":"e","data":"{\\"x\\":1}"}'


async def test_malformed_since_gets_an_error_and_no_subscription(node: Node):
    """A `since` that is not an object of positions is refused; the socket stays open."""
    live = node()
    async with connect(live.ws_url) as ws:
        token = subscribe_token(["room"])
        for since in (
            [],
            {"room": {"epoch": "e"}},
            {"room": {"epoch": 1, "offset": 0}},
            {"room": {"epoch": "e", "offset": -1}},
            {"room": {"epoch": "e", "offset": 1.5}},
            {"room": {"epoch": "e", "offset": True}},
            {"room": {"epoch": "x" * 100, "offset": 0}},
            {"room": 5},
        ):
            await ws.send(json.dumps({"event": "authenticate", "data": token, "since": since}))
            frame = await receive_json(ws)
            assert frame["event"] == "error", frame
            assert "since" in json.loads(frame["data"])["error"]
        await ws.send(json.dumps({"event": "authenticate", "data": token, "since": {}}))
        assert (await receive_json(ws))["event"] == "subscribed"


async def test_not_recovered_when_evicted_by_size(node: Node):
    """More missed messages than the history keeps: no old message, `recovered: false`."""
    live = node({"BIFROST_HISTORY_SIZE": "5"})
    reader = Reader(["busy"])
    await reader.connect(live)
    await reader.close()
    for n in range(6):
        await broadcast(live, n, "busy")
    subscribed = await reader.connect(live)
    assert subscribed["busy"]["recovered"] is False
    assert subscribed["busy"]["positions"]["busy"]["offset"] == 6
    await broadcast(live, "live", "busy")
    assert await reader.messages(1) == ["live"]
    await reader.close()


async def test_not_recovered_after_the_ttl(node: Node):
    """A stream forgotten after its TTL starts afresh with a new epoch."""
    live = node({"BIFROST_HISTORY_TTL": "0.5"})
    reader = Reader(["quiet"])
    await reader.connect(live)
    await broadcast(live, "old", "quiet")
    assert await reader.messages(1) == ["old"]
    epoch = reader.since["quiet"]["epoch"]
    await reader.close()
    await asyncio.sleep(1.0)
    subscribed = await reader.connect(live)
    assert subscribed["quiet"]["recovered"] is False
    assert subscribed["quiet"]["positions"]["quiet"]["epoch"] != epoch
    assert subscribed["quiet"]["positions"]["quiet"]["offset"] == 0
    await reader.close()


async def test_recovery_of_one_authenticate_is_capped_at_the_history_size(node: Node):
    """Two channels missing 4 messages each, a history of 5: the first is recovered, the
    second, past the cap, is not."""
    live = node({"BIFROST_HISTORY_SIZE": "5"})
    reader = Reader(["one", "two"])
    await reader.connect(live)
    await reader.close()
    for n in range(4):
        await broadcast(live, f"one {n}", "one")
        await broadcast(live, f"two {n}", "two")
    subscribed = await reader.connect(live)
    assert subscribed["one"]["recovered"] is True
    assert subscribed["two"]["recovered"] is False
    assert await reader.messages(4) == [f"one {n}" for n in range(4)]
    await reader.nothing_more()
    await reader.close()


async def test_positioned_socket_with_history_off_is_told_nothing_was_recovered(
    start_server: Callable[..., BifrostServer],
):
    """History off: no positions anywhere, and `recovered: false` for the channels named."""
    live = start_server()
    async with connect(live.ws_url) as ws:
        since = {"named": {"epoch": "e", "offset": 3}}
        token = subscribe_token(["named", "other"])
        await ws.send(json.dumps({"event": "authenticate", "data": token, "since": since}))
        assert await ws.recv() == (
            '{"event":"subscribed","data":"{\\"channel\\":\\"named\\"}","recovered":false}'
        )
        assert await ws.recv() == '{"event":"subscribed","data":"{\\"channel\\":\\"other\\"}"}'
        token = broadcast_token({"event": "e", "data": 1}, channel="named")
        assert (await post_broadcast(live, token)).json() == {"message": "Success", "deliveries": 1}
        assert await ws.recv() == '{"event":"e","data":1}'


async def test_message_key_positions_is_refused_with_history_on(node: Node):
    """With history on, `positions` in a message would be overwritten for positioned sockets."""
    live = node()
    token = broadcast_token({"event": "e", "positions": 1}, channel="room")
    answer = await post_broadcast(live, token)
    assert answer.status_code == 400
    assert "positions" in answer.json()["error"]


async def test_later_authenticate_adds_channels_and_recovers_them(node: Node):
    """A positioned socket's second authenticate adds a channel and recovers it from `since`,
    while the channels it heard already go on without a break."""
    live = node()
    reader = Reader(["old"])
    await reader.connect(live)
    await broadcast(live, "old 1", "old")
    assert await reader.messages(1) == ["old 1"]
    other = Reader(["new"])
    await other.connect(live)
    await other.close()
    await broadcast(live, "new 1", "new")
    await broadcast(live, "to both", "old", "new")
    assert await reader.messages(1) == ["to both"]
    assert reader.ws is not None
    since = {"new": other.since["new"]}
    token = subscribe_token(["old", "new"])
    await reader.ws.send(json.dumps({"event": "authenticate", "data": token, "since": since}))
    old, new = await reader.receive(), await reader.receive()
    assert old == {"event": "subscribed", "data": '{"channel":"old"}'}
    assert new["recovered"] is True and new["positions"]["new"]["offset"] == 0
    assert await reader.messages(2) == ["new 1", "to both"]
    assert reader.since["new"]["offset"] == 2 and reader.since["old"]["offset"] == 2
    await reader.nothing_more()
    await reader.close()


@pytest.mark.parametrize("broker", ["in-process"])
async def test_not_recovered_after_an_in_process_restart(node: Node):
    """The in-process history dies with the process: the new one has new epochs."""
    before = node(name="before-restart")
    reader = Reader(["room"])
    await reader.connect(before)
    await broadcast(before, "kept in memory", "room")
    assert await reader.messages(1) == ["kept in memory"]
    before_epoch = reader.since["room"]["epoch"]
    await reader.close()
    before.stop()
    after = node(name="after-restart")
    subscribed = await reader.connect(after)
    assert subscribed["room"]["recovered"] is False
    epoch = reader.since["room"]["epoch"]
    assert subscribed["room"]["positions"]["room"] == {
        "epoch": reader.since["room"]["epoch"],
        "offset": 0,
    }
    assert epoch != before_epoch
    await reader.close()


@pytest.mark.parametrize("broker", ["redis"])
async def test_not_recovered_after_redis_loses_its_data(node: Node, redis_server: RedisServer):
    """FLUSHALL takes the meta key with it: a new epoch, never offsets that start again."""
    live = node()
    reader = Reader(["room"])
    await reader.connect(live)
    await broadcast(live, "before the flush", "room")
    assert await reader.messages(1) == ["before the flush"]
    epoch = reader.since["room"]["epoch"]
    await reader.close()
    redis_server.client().flushall()
    answer = await broadcast(live, "after the flush", "room")
    assert answer["positions"]["room"]["epoch"] != epoch
    assert answer["positions"]["room"]["offset"] == 1
    subscribed = await reader.connect(live)
    assert subscribed["room"]["recovered"] is False
    assert subscribed["room"]["positions"]["room"]["offset"] == 1
    await reader.close()


@pytest.mark.parametrize("broker", ["redis"])
async def test_history_keys_live_under_the_prefix_and_expire(node: Node, redis_server: RedisServer):
    """Stream and meta key under BIFROST_REDIS_PREFIX, trimmed to the size, with the TTL."""
    live = node({"BIFROST_REDIS_PREFIX": "app1:", "BIFROST_HISTORY_SIZE": "3"})
    for n in range(5):
        await broadcast(live, n, "room")
    client = redis_server.client()
    assert client.xlen("app1:stream:room") == 3
    assert [entry_id for entry_id, _ in client.xrange("app1:stream:room")] == ["0-3", "0-4", "0-5"]
    assert client.hget("app1:meta:room", "top") == "5"
    assert 0 < client.pttl("app1:stream:room") <= 60_000
    assert 0 < client.pttl("app1:meta:room") <= 60_000


@pytest.mark.parametrize("broker", ["redis"])
async def test_reconnect_to_another_node_while_broadcasts_go_on(node: Node):
    """A socket leaves node A and comes back on node B during a steady stream of broadcasts:
    it ends with every message once and in order."""
    a, b = await asyncio.gather(asyncio.to_thread(node), asyncio.to_thread(node))
    reader = Reader(["feed"])
    await reader.connect(a)
    sent = 0

    async def keep_broadcasting() -> None:
        nonlocal sent
        for n in range(60):
            await broadcast(b if n % 2 else a, n, "feed")
            sent += 1
            await asyncio.sleep(0.005)

    sender = asyncio.create_task(keep_broadcasting())
    received: list[Any] = []
    while sent < 15:
        received += await reader.messages(1)
    await reader.close()
    await asyncio.sleep(0.05)
    subscribed = await reader.connect(b)
    assert subscribed["feed"]["recovered"] is True
    await sender
    received += await reader.messages(60 - len(received))
    assert received == list(range(60))
    assert reader.since["feed"]["offset"] == 60
    await reader.nothing_more()
    await reader.close()


@pytest.mark.parametrize("broker", ["redis"])
async def test_positioned_sockets_are_sent_to_recover_when_redis_is_lost(
    node: Node, redis_server: RedisServer
):
    """A node that stops hearing Redis closes its positioned sockets with 1013, so that they
    come back and recover (or hear they cannot) rather than miss messages unawares."""
    live = node()
    reader = Reader(["room"])
    await reader.connect(live)
    async with connect(live.ws_url) as plain:
        await plain.send(json.dumps({"event": "authenticate", "data": subscribe_token(["room"])}))
        assert (await receive_json(plain))["event"] == "subscribed"
        redis_server.stop()
        assert reader.ws is not None
        await asyncio.wait_for(reader.ws.wait_closed(), 10)
        assert (reader.ws.close_code, reader.ws.close_reason) == (1013, "Try again later")
        await plain.send('{"event":"ping"}')
        assert await receive_json(plain) == {"event": "pong"}
    redis_server.start()
    for _ in range(100):
        if httpx.get(f"{live.url}/readyz").status_code == 200:
            break
        await asyncio.sleep(0.1)
    subscribed = await reader.connect(live)
    assert subscribed["room"]["recovered"] is False  # that Redis kept nothing
    await broadcast(live, "after", "room")
    assert await reader.messages(1) == ["after"]
    await reader.close()


async def test_many_recoveries_at_once_all_succeed(node: Node):
    """A reconnect storm: 300 positioned sockets authenticating at the same moment each get
    their `subscribed` frame, none is closed to try again later (on Redis, more snapshots in
    flight than the broker's connections wait for one instead of failing)."""
    live = node()
    await broadcast(live, "kept", "storm")
    readers = [Reader(["storm"]) for _ in range(300)]
    for reader in readers:
        reader.since = {"storm": {"epoch": "unknown", "offset": 0}}
    await asyncio.gather(*(reader.connect(live) for reader in readers))
    await asyncio.gather(*(reader.close() for reader in readers))
