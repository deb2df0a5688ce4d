"""Several nodes and workers through a real Redis: routing, exact counts and faults."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bifrost.brokers.redis import HEARTBEAT_INTERVAL, HEARTBEAT_TTL, REPLY_TIMEOUT
from tests.clients import authenticated, receive_json
from tests.delay_proxy import DelayProxy
from tests.live import BifrostServer, broadcast_token, subscribe_token
from tests.raw_peer import RawPeer, authenticate_frame, close_frame
from tests.redis_server import RedisServer

# How long figures may take to reach another node: one heartbeat, and some slack.
HEARTBEAT_LAG = HEARTBEAT_INTERVAL + 1.5
# A refused broadcast must be answered well before a sender's own timeout.
REFUSAL_BOUND = 5.0
# Redis in another region: what each command takes to reach it.
FAR_AWAY = 0.15
# How long Redis may take to confirm a subscription before the socket is told to come back.
SUBSCRIBE_BOUND = 2.0

Node = Callable[..., BifrostServer]
# The graceful timeout of the stopping tests: Sanic's default of 15 s, cut so that a stop is
# seen within its bound on a loaded machine.
GRACEFUL_SHUTDOWN_S = 5.0


@pytest.fixture
def node(redis_server: RedisServer, start_server: Callable[..., BifrostServer]) -> Node:
    """Start a Bifröst node sharing the test's Redis (stopped before Redis is)."""

    def start(env: dict[str, str] | None = None, **kwargs: Any) -> BifrostServer:
        return start_server({"BIFROST_REDIS_URL": redis_server.url, **(env or {})}, **kwargs)

    return start


@pytest.fixture
def far_redis(redis_server: RedisServer) -> Iterator[Callable[[float], DelayProxy]]:
    """Proxies to the test's Redis that delay every command by the given seconds (named before
    `node` by a test, they stop after its nodes do)."""
    proxies: list[DelayProxy] = []

    def start(delay: float = FAR_AWAY) -> DelayProxy:
        proxies.append(DelayProxy(redis_server.port, delay).start())
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.stop()


async def post(server: BifrostServer, token: str, timeout: float = 10) -> httpx.Response:
    """POST a broadcast as an application's server does, waiting at most `timeout` seconds."""
    async with httpx.AsyncClient(base_url=server.url, timeout=timeout) as http:
        return await http.post("/broadcast", json={"token": token})


async def assert_nothing_more(ws: ClientConnection) -> None:
    """The next frame is the pong to a ping sent now: no other frame was on its way."""
    await ws.send('{"event":"ping"}')
    assert await receive_json(ws) == {"event": "pong"}


async def eventually(check: Callable[[], bool], within: float, what: str) -> None:
    """Wait until `check()` holds, failing after `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.1)


async def started(*starts: Callable[[], BifrostServer]) -> list[BifrostServer]:
    """Start servers side by side: each takes a second or so to import and bind."""
    return list(await asyncio.gather(*(asyncio.to_thread(start) for start in starts)))


async def close_all(sockets: list[ClientConnection]) -> None:
    await asyncio.gather(*(ws.close() for ws in sockets))


async def test_broadcast_to_one_node_reaches_subscribers_on_another(node: Node):
    """A subscriber on node A receives a broadcast posted to node B, and B counts it."""
    a, b = await started(node, node)
    ws = await authenticated(a, ["cross"])
    token = broadcast_token({"event": "hop", "data": "from B"}, channel="cross")
    assert (await post(b, token)).json() == {"message": "Success", "deliveries": 1}
    assert await receive_json(ws) == {"event": "hop", "data": "from B"}
    await assert_nothing_more(ws)
    await ws.close()


async def test_multi_channel_broadcast_reaches_each_socket_once_across_nodes(node: Node):
    """A socket hearing several named channels gets one copy, wherever it and the sender are."""
    a, b, c = await started(node, node, node)
    both_on_a = await authenticated(a, ["x", "y"])
    both_on_b = await authenticated(b, ["y", "x"])
    y_on_b = await authenticated(b, ["y"])
    other_on_b = await authenticated(b, ["z"])
    token = broadcast_token({"event": "once", "data": [1, 2]}, channels=["x", "y"])
    assert (await post(c, token)).json()["deliveries"] == 3
    for ws in (both_on_a, both_on_b, y_on_b):
        assert await receive_json(ws) == {"event": "once", "data": [1, 2]}
        await assert_nothing_more(ws)
    await assert_nothing_more(other_on_b)
    await close_all([both_on_a, both_on_b, y_on_b, other_on_b])


async def test_deliveries_and_stats_are_totals_over_nodes(node: Node):
    """`deliveries` of a broadcast and `/info.json` on any node add up every node."""
    a, b = await started(node, node)
    on_a = [await authenticated(a, ["x", "y"]) for _ in range(2)]
    on_b = [await authenticated(b, ["y"]) for _ in range(3)]
    token = broadcast_token({"event": "both"}, channels=["x", "y"])
    assert (await post(a, token)).json()["deliveries"] == 5
    token = broadcast_token({"event": "x only"}, channel="x")
    assert (await post(b, token)).json()["deliveries"] == 2

    def figures(server: BifrostServer) -> tuple[int, int]:
        stats = server.stats()
        return stats["connected"], stats["deliveries"]

    await eventually(lambda: figures(a) == figures(b) == (5, 7), HEARTBEAT_LAG, "totals")
    await close_all(on_a + on_b)


async def test_a_hash_that_is_no_heartbeat_leaves_stats_answering(
    node: Node, redis_server: RedisServer
):
    """A hash posing as a node's heartbeat without counts, or a member of the nodes set that
    is not text, is left out: `/info.json` answers 200 with the real nodes' totals."""
    a = node()
    client = redis_server.client()
    junk = {"connected": "many", "deliveries": "0", "channels": "0", "subscriptions": "0"}
    client.hset("bifrost:node:impostor", mapping=junk)
    client.sadd("bifrost:nodes", "impostor", b"\xff")
    ws = await authenticated(a, ["here"])
    async with httpx.AsyncClient(base_url=a.url) as http:
        answer = await http.get("/info.json")
    assert answer.status_code == 200
    stats = {
        "deliveries": 0,
        "connected": 1,
        "channels": 1,
        "subscriptions": 1,
        "websockets": 1,
        "event_streams": 0,
    }
    assert answer.json() == {"stats": stats}
    await ws.close()


async def test_nodes_subscribe_in_redis_only_to_channels_they_hear(
    node: Node, redis_server: RedisServer
):
    """A node subscribes in Redis on a channel's first local socket and leaves after its last."""
    a = node()
    client = redis_server.client()
    key = "bifrost:channel:only-here"

    def subscribers() -> int:
        return int(client.pubsub_numsub(key)[0][1])

    assert subscribers() == 0
    first = await authenticated(a, ["only-here"])
    assert subscribers() == 1, "subscribed before the socket hears `subscribed`"
    second = await authenticated(a, ["only-here"])
    assert subscribers() == 1, "one subscription per node, not per socket"
    await first.close()
    await asyncio.sleep(0.3)
    assert subscribers() == 1
    await second.close()
    await eventually(lambda: subscribers() == 0, 2, "unsubscribed after the last socket")


async def test_socket_leaving_while_its_channels_subscribe_leaves_none_behind(
    node: Node, redis_server: RedisServer
):
    """A socket that authenticates to several channels and leaves in the same breath: once it
    is gone, the node holds no subscription in Redis for any of them."""
    a = node()
    client = redis_server.client()
    channels = [f"fleeting:{n}" for n in range(5)]
    leave = close_frame()
    for _ in range(3):
        peer = await asyncio.to_thread(RawPeer, a)
        await asyncio.to_thread(peer.send, authenticate_frame(channels) + leave)
        await eventually(lambda: a.stats()["connected"] == 0, 3, "the socket is gone")
        peer.close()

    def held() -> list[bytes]:
        return client.pubsub_channels("bifrost:channel:fleeting:*")

    await eventually(lambda: not held(), 3, "no channel of the departed socket left in Redis")
    await asyncio.sleep(0.5)
    assert held() == []


async def test_prefix_separates_deployments(node: Node):
    """Two deployments with different BIFROST_REDIS_PREFIX share a Redis without crosstalk."""
    blue, green = await started(
        partial(node, {"BIFROST_REDIS_PREFIX": "blue:"}),
        partial(node, {"BIFROST_REDIS_PREFIX": "green:"}),
    )
    ws = await authenticated(blue, ["shared-name"])
    token = broadcast_token({"event": "green only"}, channel="shared-name")
    assert (await post(green, token)).json()["deliveries"] == 0
    token = broadcast_token({"event": "blue"}, channel="shared-name")
    assert (await post(blue, token)).json()["deliveries"] == 1
    assert await receive_json(ws) == {"event": "blue"}
    assert green.stats()["connected"] == 0
    await ws.close()


async def test_two_workers_on_one_port_deliver_to_every_socket(
    node: Node, redis_server: RedisServer
):
    """With `--workers 2`, a broadcast reaches sockets whichever worker holds them."""
    live = node(args=("--workers", "2"))
    client = redis_server.client()

    def sockets_per_worker() -> list[int]:
        workers = client.smembers("bifrost:nodes")
        return [int(client.hget(f"bifrost:node:{w}", "connected") or 0) for w in workers]

    sockets: list[ClientConnection] = []
    deadline = time.monotonic() + 10
    while not (len(per := sockets_per_worker()) == 2 and min(per) > 0):
        assert time.monotonic() < deadline, f"sockets per worker: {per}"
        sockets += [await authenticated(live, ["workers"]) for _ in range(4)]
        await asyncio.sleep(HEARTBEAT_INTERVAL + 0.2)
    assert live.stats()["connected"] == len(sockets)
    for n in range(3):
        token = broadcast_token({"event": "n", "data": n}, channel="workers")
        assert (await post(live, token)).json()["deliveries"] == len(sockets)
    for ws in sockets:
        assert [await receive_json(ws) for _ in range(3)] == [
            {"event": "n", "data": n} for n in range(3)
        ]
    await close_all(sockets)
    assert live.log().count("Worker ready") == 2


async def test_killed_node_stops_counting(node: Node):
    """A node that dies without saying goodbye leaves the totals within the heartbeat expiry."""
    a, b = await started(node, node)
    sockets = [await authenticated(b, ["doomed"]) for _ in range(3)]
    await eventually(lambda: a.stats()["connected"] == 3, HEARTBEAT_LAG, "b's sockets counted")
    assert b.process is not None
    b.process.send_signal(signal.SIGKILL)
    b.process.wait()
    await eventually(lambda: a.stats()["connected"] == 0, HEARTBEAT_TTL + 1.5, "b forgotten")
    token = broadcast_token({"event": "anyone"}, channel="doomed")
    assert (await post(a, token)).json()["deliveries"] == 0
    await close_all(sockets)


@pytest.mark.parametrize("args", [("--single-process",), ("--workers", "2")])
async def test_stopping_node_closes_sockets_and_gives_up_channels_cleanly(node: Node, args):
    """SIGTERM with many sockets on channels of their own: each hears 1012, the node lets go of
    its Redis subscriptions before its broker, exits 0 within its graceful timeout (then 5 s
    for the broker's goodbyes), and logs no error (checked on stop)."""
    a = node({"SANIC_GRACEFUL_SHUTDOWN_TIMEOUT": str(GRACEFUL_SHUTDOWN_S)}, args=args)
    sockets = [await authenticated(a, [f"own:{n}", "shared"]) for n in range(60)]
    assert a.process is not None
    a.process.send_signal(signal.SIGTERM)
    for ws in sockets:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1012
    assert await asyncio.to_thread(a.process.wait, 2 * GRACEFUL_SHUTDOWN_S + 5) == 0


async def test_silent_node_delays_a_broadcast_by_the_reply_bound_only(node: Node):
    """A node that stops answering costs a broadcast at most the reply bound, never a hang."""
    a, b = await started(node, node)
    on_a = await authenticated(a, ["frozen"])
    on_b = await authenticated(b, ["frozen"])
    assert b.process is not None
    os.kill(b.process.pid, signal.SIGSTOP)
    try:
        token = broadcast_token({"event": "while frozen"}, channel="frozen")
        began = time.monotonic()
        response = await post(a, token, timeout=REPLY_TIMEOUT + 5)
        elapsed = time.monotonic() - began
        assert response.json() == {"message": "Success", "deliveries": 1}, "what was confirmed"
        assert REPLY_TIMEOUT - 0.5 <= elapsed <= REPLY_TIMEOUT + 2
        assert await receive_json(on_a) == {"event": "while frozen"}
    finally:
        os.kill(b.process.pid, signal.SIGCONT)
    assert await receive_json(on_b) == {"event": "while frozen"}, "late, but delivered"
    await close_all([on_a, on_b])


async def test_redis_outage_answers_503_and_recovers(node: Node, redis_server: RedisServer):
    """Redis down: 503 with a JSON error, sockets stay; Redis back: delivery resumes unaided."""
    a, b = await started(node, node)
    ws = await authenticated(a, ["outage"])
    redis_server.stop()
    token = broadcast_token({"event": "lost?"}, channel="outage")
    for server in (b, a):
        began = time.monotonic()
        response = await post(server, token, timeout=REFUSAL_BOUND + 5)
        assert time.monotonic() - began < REFUSAL_BOUND
        assert response.status_code == 503
        assert "not delivered" in response.json()["error"]
    ready = httpx.get(f"{a.url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable" and ready.json()["reason"]
    assert httpx.get(f"{a.url}/healthz").status_code == 200, "alive: nothing to restart"
    await assert_nothing_more(ws)
    redis_server.start()
    await eventually(lambda: httpx.get(f"{b.url}/readyz").status_code == 200, 5, "b ready")
    await eventually(lambda: httpx.get(f"{a.url}/readyz").status_code == 200, 5, "a ready")
    token = broadcast_token({"event": "back"}, channel="outage")
    assert (await post(b, token)).json() == {"message": "Success", "deliveries": 1}
    assert await receive_json(ws) == {"event": "back"}
    await assert_nothing_more(ws)
    await ws.close()


async def test_node_started_before_redis_serves_and_delivers_once_it_is_up(
    start_server: Node, log_dir: Path
):
    """A node whose Redis is not up yet starts and says it is not ready; a socket it cannot
    subscribe is closed 1013 `Try again later`, never told `subscribed`; once Redis is up,
    sockets subscribe and hear broadcasts."""
    later = RedisServer(log_dir)
    live = start_server({"BIFROST_REDIS_URL": later.url})
    try:
        early = await authenticate(live, ["early"])
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(early.recv(), SUBSCRIBE_BOUND + 3)
        assert (early.close_code, early.close_reason) == (1013, "Try again later")
        assert httpx.get(f"{live.url}/readyz").status_code == 503
        token = broadcast_token({"event": "too early"}, channel="early")
        assert (await post(live, token)).status_code == 503
        later.start()
        await eventually(lambda: httpx.get(f"{live.url}/readyz").status_code == 200, 5, "ready")
        ws = await authenticated(live, ["early"])
        token = broadcast_token({"event": "now"}, channel="early")
        assert (await post(live, token)).json()["deliveries"] == 1
        assert await receive_json(ws) == {"event": "now"}
        await ws.close()
    finally:
        live.stop()
        later.stop()


async def authenticate(server: BifrostServer, channels: list[str]) -> ClientConnection:
    """A socket that has sent its token, whatever the server answers."""
    ws = await connect(server.ws_url)
    await ws.send(json.dumps({"event": "authenticate", "data": subscribe_token(channels)}))
    return ws


async def subscribed_to(ws: ClientConnection, channels: list[str]) -> None:
    """The socket hears `subscribed` for each channel, in the token's order."""
    heard = [await receive_json(ws) for _ in channels]
    assert [json.loads(frame["data"])["channel"] for frame in heard] == channels
    assert {frame["event"] for frame in heard} == {"subscribed"}


async def test_token_of_many_channels_subscribes_in_one_round_trip_to_a_far_redis(
    far_redis: Callable[[float], DelayProxy], node: Node
):
    """80 channels with 150 ms to Redis: all 80 `subscribed` frames come within the auth
    timeout, in the token's order, and a broadcast sent right after them reaches the socket."""
    far = node({"BIFROST_REDIS_URL": far_redis(FAR_AWAY).url(), "BIFROST_AUTH_TIMEOUT": "1.5"})
    channels = [f"many:{n}" for n in range(80)]
    ws = await authenticate(far, channels)
    await subscribed_to(ws, channels)
    token = broadcast_token({"event": "all"}, channels=channels[-2:])
    assert (await post(far, token)).json() == {"message": "Success", "deliveries": 1}
    assert await receive_json(ws) == {"event": "all"}
    await assert_nothing_more(ws)
    await ws.close()


async def test_second_socket_on_a_pending_channel_waits_for_its_subscription(
    far_redis: Callable[[float], DelayProxy], node: Node
):
    """A socket joining a channel whose subscription in Redis is still on its way hears
    `subscribed` only once it is made: a broadcast sent right after reaches both sockets."""
    proxy = far_redis(0)
    far, near = await started(partial(node, {"BIFROST_REDIS_URL": proxy.url()}), node)
    proxy.delay = 0.5  # wide enough a window for the second socket, on a slow machine too
    first = await authenticate(far, ["pending"])
    second = await authenticate(far, ["pending"])
    await subscribed_to(second, ["pending"])
    token = broadcast_token({"event": "right after"}, channel="pending")
    assert (await post(near, token)).json() == {"message": "Success", "deliveries": 2}
    await subscribed_to(first, ["pending"])
    for ws in (first, second):
        assert await receive_json(ws) == {"event": "right after"}
    await close_all([first, second])


async def test_subscribe_unsubscribe_subscribe_in_one_round_trip_confirms_the_last(
    far_redis: Callable[[float], DelayProxy], node: Node
):
    """A channel subscribed, given up and subscribed again before Redis answered the first:
    the last socket hears `subscribed` only from the answer to its own subscription."""
    proxy = far_redis(0)
    far, near = await started(partial(node, {"BIFROST_REDIS_URL": proxy.url()}), node)
    proxy.delay = 0.5  # from now on, wide enough a window to be sure of the order of events
    key = b"bifrost:channel:again"
    leaving = await authenticate(far, ["again"])
    await asyncio.to_thread(proxy.wait_received, key, 1)
    await leaving.close()
    await asyncio.to_thread(proxy.wait_received, key, 2)
    await asyncio.sleep(0.1)  # the last socket joins later, but before Redis answered the first
    staying = await authenticate(far, ["again"])
    await subscribed_to(staying, ["again"])
    # The broadcast goes out once Redis has dropped the channel of the socket that left.
    await asyncio.to_thread(proxy.wait_forwarded, key, 2)
    token = broadcast_token({"event": "for the last"}, channel="again")
    assert (await post(near, token)).json() == {"message": "Success", "deliveries": 1}
    assert await receive_json(staying) == {"event": "for the last"}
    await staying.close()


async def test_socket_whose_channel_redis_does_not_confirm_is_told_to_try_again(
    node: Node, redis_server: RedisServer
):
    """Redis frozen while a socket subscribes: within the bound the socket is closed 1013
    `Try again later`, never told `subscribed`; a socket subscribed before stays."""
    a = node()
    before = await authenticated(a, ["before"])
    assert redis_server.process is not None
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        ws = await authenticate(a, ["while frozen"])
        began = time.monotonic()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), SUBSCRIBE_BOUND + 3)
        assert time.monotonic() - began < SUBSCRIBE_BOUND + 2
        assert (ws.close_code, ws.close_reason) == (1013, "Try again later")
        await assert_nothing_more(before)
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    await before.close()


def script_calls(redis_server: RedisServer) -> int:
    """Script calls Redis has run so far (EVALSHA, and EVAL before a script is cached)."""
    stats = redis_server.client().info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
    )


async def recover_once(server: BifrostServer, channel: str) -> dict[str, Any]:
    """A positioned socket's `subscribed` frame, after it asked from a position unknown there."""
    async with connect(server.ws_url) as ws:
        since = {channel: {"epoch": "unknown", "offset": 0}}
        frame = {"event": "authenticate", "data": subscribe_token([channel]), "since": since}
        await ws.send(json.dumps(frame))
        return await receive_json(ws)


async def test_recoveries_asked_while_reads_are_out_share_script_calls(
    far_redis: Callable[[float], DelayProxy], node: Node, redis_server: RedisServer
):
    """40 positioned sockets authenticating 10 ms apart, Redis 100 ms away: every one hears
    where the channel is, and those that ask while earlier history reads are out go together
    in the next read, in at most half as many script calls as sockets (one each before)."""
    far = node({"BIFROST_REDIS_URL": far_redis(0.1).url(), "BIFROST_HISTORY_SIZE": "20"})
    # Heard here already: the sockets wait for no SUBSCRIBE, only for their history.
    listener = await authenticate(far, ["storm"])
    await subscribed_to(listener, ["storm"])
    assert (await post(far, broadcast_token({"event": "kept"}, channel="storm"))).status_code == 200
    top = (await recover_once(far, "storm"))["positions"]["storm"]  # the script is cached now
    before = script_calls(redis_server)

    async def recover(n: int) -> dict[str, Any]:
        await asyncio.sleep(n * 0.01)
        return await recover_once(far, "storm")

    replies = await asyncio.gather(*(recover(n) for n in range(40)))
    calls = script_calls(redis_server) - before
    assert [(r["event"], r["positions"]["storm"], r["recovered"]) for r in replies] == [
        ("subscribed", top, False)
    ] * 40
    assert calls <= 20, f"{calls} script calls for 40 recoveries"
    await listener.close()
