"""Several nodes and workers through a real Redis: routing, exact counts and faults."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from bifrost.redis_broker import HEARTBEAT_TTL
from tests.clients import authenticated, post_broadcast, receive_json
from tests.live import BifrostServer, broadcast_token
from tests.redis_server import RedisServer


@pytest.fixture
def redis_server(log_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_dir).start()
    yield server
    server.stop()


@pytest.fixture
def node(start_server, redis_server: RedisServer) -> Callable[..., BifrostServer]:
    """Start a Bifröst node sharing the test's Redis."""

    def start(**kwargs: object) -> BifrostServer:
        env = {"BIFROST_REDIS_URL": redis_server.url, **kwargs.pop("env", {})}  # type: ignore[dict-item]
        return start_server(env, **kwargs)

    return start


async def test_broadcast_to_one_node_reaches_subscribers_on_another(node):
    """A subscriber on node A receives a broadcast posted to node B, and B counts it."""
    a, b = node(), node()
    ws = await authenticated(a, ["cross"])
    token = broadcast_token({"event": "hop", "data": "from B"}, channel="cross")
    assert (await post_broadcast(b, token)).json() == {"message": "Success", "deliveries": 1}
    assert await receive_json(ws) == {"event": "hop", "data": "from B"}
    await ws.close()


async def test_deliveries_and_stats_are_totals_over_nodes(node):
    """`deliveries` and `/info.json` add up every node; several channels reach a socket once."""
    a, b = node(), node()
    on_a = [await authenticated(a, ["x", "y"]) for _ in range(2)]
    on_b = [await authenticated(b, ["y"]) for _ in range(3)]
    token = broadcast_token({"event": "both"}, channels=["x", "y"])
    assert (await post_broadcast(a, token)).json()["deliveries"] == 5
    for ws in on_a + on_b:
        assert await receive_json(ws) == {"event": "both"}
        await ws.send('{"event":"ping"}')
        assert await receive_json(ws) == {"event": "pong"}, "one copy per socket"
    await asyncio.sleep(1.5)  # a heartbeat
    for server in (a, b):
        stats = server.stats()
        assert (stats["connected"], stats["deliveries"]) == (5, 5)
    for ws in on_a + on_b:
        await ws.close()


async def test_nodes_subscribe_in_redis_only_to_channels_they_hear(node, redis_server):
    """A node subscribes in Redis on a channel's first local socket and leaves after its last."""
    a = node()
    client = redis.Redis(port=redis_server.port)
    channel_key = b"bifrost:channel:only-here"
    assert client.pubsub_numsub(channel_key) == [(channel_key, 0)]
    first = await authenticated(a, ["only-here"])
    second = await authenticated(a, ["only-here"])
    assert client.pubsub_numsub(channel_key) == [(channel_key, 1)]
    await first.close()
    await asyncio.sleep(0.2)
    assert client.pubsub_numsub(channel_key) == [(channel_key, 1)]
    await second.close()
    await asyncio.sleep(0.3)
    assert client.pubsub_numsub(channel_key) == [(channel_key, 0)]


async def test_prefix_separates_deployments(node):
    """Two deployments with different BIFROST_REDIS_PREFIX share a Redis without crosstalk."""
    blue = node(env={"BIFROST_REDIS_PREFIX": "blue:"})
    green = node(env={"BIFROST_REDIS_PREFIX": "green:"})
    ws = await authenticated(blue, ["shared-name"])
    token = broadcast_token({"event": "green only"}, channel="shared-name")
    assert (await post_broadcast(green, token)).json()["deliveries"] == 0
    token = broadcast_token({"event": "blue"}, channel="shared-name")
    assert (await post_broadcast(blue, token)).json()["deliveries"] == 1
    assert await receive_json(ws) == {"event": "blue"}
    await ws.close()


async def test_two_workers_on_one_port_deliver_to_every_socket(node):
    """With `--workers 2`, a broadcast reaches sockets whichever worker holds them."""
    live = node(args=("--workers", "2"))
    sockets = [await authenticated(live, ["workers"]) for _ in range(12)]
    await asyncio.sleep(1.5)
    assert live.stats()["connected"] == 12
    for n in range(4):
        token = broadcast_token({"event": "n", "data": n}, channel="workers")
        assert (await post_broadcast(live, token)).json()["deliveries"] == 12
    for ws in sockets:
        assert [await receive_json(ws) for _ in range(4)] == [
            {"event": "n", "data": n} for n in range(4)
        ]
        await ws.close()
    log = live.log()
    assert log.count("Worker ready") == 2


async def test_killed_node_stops_counting(node):
    """A node that dies without saying goodbye leaves the totals within the heartbeat expiry."""
    a, b = node(), node()
    sockets = [await authenticated(b, ["doomed"]) for _ in range(3)]
    await asyncio.sleep(1.5)
    assert a.stats()["connected"] == 3
    b.process.send_signal(signal.SIGKILL)
    b.process.wait()
    await asyncio.sleep(HEARTBEAT_TTL + 1)
    assert a.stats()["connected"] == 0
    token = broadcast_token({"event": "anyone"}, channel="doomed")
    assert (await post_broadcast(a, token)).json()["deliveries"] == 0
    for ws in sockets:
        await ws.close()


async def test_redis_outage_answers_503_and_recovers(node, redis_server):
    """Redis down: 503 with a JSON error, sockets stay; Redis back: delivery resumes unaided."""
    a, b = node(), node()
    ws = await authenticated(a, ["outage"])
    redis_server.stop()
    await asyncio.sleep(0.5)
    token = broadcast_token({"event": "lost?"}, channel="outage")
    async with httpx.AsyncClient(base_url=b.url, timeout=10) as http:
        started = asyncio.get_running_loop().time()
        response = await http.post("/broadcast", json={"token": token})
        assert asyncio.get_running_loop().time() - started < 5
    assert response.status_code == 503
    assert "error" in response.json()
    await ws.send('{"event":"ping"}')
    assert await receive_json(ws) == {"event": "pong"}, "the socket stays connected"
    redis_server.start()
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        token = broadcast_token({"event": "back"}, channel="outage")
        response = await post_broadcast(b, token)
        if response.status_code == 200 and response.json()["deliveries"] == 1:
            break
        assert asyncio.get_running_loop().time() < deadline, response.text
        await asyncio.sleep(0.2)
    assert await receive_json(ws) == {"event": "back"}
    await ws.close()
