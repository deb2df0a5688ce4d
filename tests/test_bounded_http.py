"""Connections that never become websockets are bounded in time and counted, on a live server."""

from __future__ import annotations

import asyncio
import json
from contextlib import suppress

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from bifrost.rules.admission import REFUSAL_HEADROOM
from tests.clients import authenticated, post_broadcast, receive_json
from tests.live import BifrostServer, broadcast_token

# The request bound of these servers (BIFROST_AUTH_TIMEOUT).
BOUND = 1.0
ENV = {"BIFROST_AUTH_TIMEOUT": str(BOUND)}
# Sanic looks at its timeouts twice per shortest timeout; the rest is for a slow machine.
SLACK = 1.5
# The keep-alive idle bound by default, and Sanic's look at it every 2.5 s.
KEEP_ALIVE = 5.0
KEEP_ALIVE_SLACK = 2.5 + SLACK
# How often a slowloris sends one more header line.
DRIP_INTERVAL = 0.2

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def opened(server: BifrostServer) -> Stream:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def answer_then_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server writes until it closes the connection."""
    received = b""
    async with asyncio.timeout(timeout):
        with suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                received += chunk
    return received


async def drip(writer: asyncio.StreamWriter, line: bytes, answered: asyncio.Event) -> None:
    """Write `line` every DRIP_INTERVAL until the server answers or drops the connection."""
    with suppress(ConnectionError):
        while not answered.is_set():
            writer.write(line)
            await writer.drain()
            await asyncio.sleep(DRIP_INTERVAL)


async def slowly_sent(server: BifrostServer, start: bytes, line: bytes) -> tuple[bytes, float]:
    """Send `start`, then `line` over and over; the answer and when the connection closed."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    reader, writer = await opened(server)
    writer.write(start)
    answered = asyncio.Event()
    dripping = asyncio.create_task(drip(writer, line, answered))
    try:
        first = await asyncio.wait_for(reader.read(65536), BOUND + SLACK + 5)
        answered.set()
        rest = await answer_then_closed(reader, SLACK)
    finally:
        answered.set()
        await dripping
        writer.close()
    return first + rest, loop.time() - began


def status_and_body(answer: bytes) -> tuple[int, object]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


async def still_delivers(server: BifrostServer, subscribers: list, channel: str) -> None:
    """A broadcast reaches every socket given."""
    token = broadcast_token({"event": "still-here"}, channel=channel)
    assert (await post_broadcast(server, token)).json()["deliveries"] == len(subscribers)
    for ws in subscribers:
        assert await receive_json(ws) == {"event": "still-here"}


@pytest.mark.parametrize(
    "start",
    [
        b"GET /info.json HTTP/1.1\r\nHost: x\r\n",
        b"GET /subscribe HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    ],
    ids=["request", "upgrade"],
)
async def test_slowloris_head_is_answered_408_at_the_bound_from_the_start(start_server, start):
    """A request head sent a line at a time, an upgrade's too, is cut BIFROST_AUTH_TIMEOUT
    after the connection opened, answered 408, while a subscriber keeps receiving."""
    live = start_server(ENV)
    subscriber = await authenticated(live, ["news"])
    slow = slowly_sent(live, start, b"X-Slow: 1\r\n")
    answer, elapsed = await slow
    assert BOUND <= elapsed < BOUND + SLACK
    assert status_and_body(answer) == (408, {"error": "Request Timeout"})
    await still_delivers(live, [subscriber], "news")
    await subscriber.close()


async def test_slowloris_after_an_answer_is_cut_at_the_bound_from_that_answer(start_server):
    """On a connection kept alive, the next request has BIFROST_AUTH_TIMEOUT from the previous
    answer to arrive, however slowly it trickles in."""
    live = start_server(ENV)
    loop = asyncio.get_running_loop()
    reader, writer = await opened(live)
    # Taken before the request: the server's clock starts when it sends the answer.
    asked = loop.time()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b"}"), 5)).startswith(b"HTTP/1.1 200")
    writer.write(b"GET /info.json HTTP/1.1\r\n")
    trickling = asyncio.Event()
    dripping = asyncio.create_task(drip(writer, b"X-Slow: 1\r\n", trickling))
    answer = await answer_then_closed(reader, BOUND + SLACK + 5)
    trickling.set()
    await dripping
    writer.close()
    assert BOUND <= loop.time() - asked < BOUND + SLACK
    assert status_and_body(answer) == (408, {"error": "Request Timeout"})


async def test_slow_body_is_answered_408_at_the_bound_from_the_start(start_server):
    """A broadcast body sent a byte at a time is cut BIFROST_AUTH_TIMEOUT after the connection
    opened, answered 408."""
    live = start_server(ENV)
    head = b"POST /broadcast HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    answer, elapsed = await slowly_sent(live, head, b" ")
    assert BOUND <= elapsed < BOUND + SLACK
    assert status_and_body(answer) == (408, {"error": "Request Timeout"})


async def test_silent_connections_are_closed_unanswered_at_the_bound(start_server):
    """Connections that send nothing are closed BIFROST_AUTH_TIMEOUT after they opened,
    with nothing written, while a subscriber keeps receiving."""
    live = start_server(ENV)
    subscriber = await authenticated(live, ["news"])
    loop = asyncio.get_running_loop()
    began = loop.time()
    silent = [await opened(live) for _ in range(3)]
    answers = await asyncio.gather(
        *(answer_then_closed(reader, BOUND + SLACK) for reader, _ in silent)
    )
    assert answers == [b""] * 3
    assert BOUND <= loop.time() - began < BOUND + SLACK
    await still_delivers(live, [subscriber], "news")
    await subscriber.close()


async def test_idle_keep_alive_connection_is_closed_after_its_bound(start_server):
    """After an answer, a connection kept alive but sent nothing more is closed after 5 s."""
    live = start_server()
    reader, writer = await opened(live)
    loop = asyncio.get_running_loop()
    # Taken before the request: the server's clock starts when it sends the answer.
    asked = loop.time()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert answer.startswith(b"HTTP/1.1 200") and b"connection: keep-alive" in answer
    await answer_then_closed(reader, KEEP_ALIVE + KEEP_ALIVE_SLACK)
    assert KEEP_ALIVE <= loop.time() - asked < KEEP_ALIVE + KEEP_ALIVE_SLACK
    writer.close()


async def test_full_of_silent_connections_answers_503_then_admits_once_they_are_cut(
    start_server,
):
    """Silent connections count against BIFROST_MAX_CONNECTIONS: a handshake past it gets a
    503 JSON answer and a closed connection, broadcasts still go through, and once the silent
    ones are cut a new client subscribes."""
    live = start_server({**ENV, "BIFROST_MAX_CONNECTIONS": "5"})
    subscriber = await authenticated(live, ["room"])
    silent = [await opened(live) for _ in range(4)]
    with pytest.raises(InvalidStatus) as refused:
        await connect(live.ws_url)
    response = refused.value.response
    assert response.status_code == 503
    assert response.headers["connection"] == "close"
    assert json.loads(response.body) == {"error": "Too many connections, try another instance"}
    await still_delivers(live, [subscriber], "room")
    for reader, _ in silent:
        assert await answer_then_closed(reader, BOUND + SLACK) == b""
    newcomer = await authenticated(live, ["room"])
    await still_delivers(live, [subscriber, newcomer], "room")
    for ws in (subscriber, newcomer):
        await ws.close()


async def test_connections_past_the_headroom_are_closed_at_once(start_server):
    """Past BIFROST_MAX_CONNECTIONS and the connections held to answer 503, a new
    connection is closed at once and said in the log; new ones are taken once those go."""
    bound = 3.0
    live = start_server({"BIFROST_AUTH_TIMEOUT": str(bound), "BIFROST_MAX_CONNECTIONS": "5"})
    held = [await opened(live) for _ in range(5 + REFUSAL_HEADROOM)]
    loop = asyncio.get_running_loop()
    reader, writer = await opened(live)
    began = loop.time()
    assert await answer_then_closed(reader, bound) == b""
    assert loop.time() - began < bound / 2
    writer.close()
    assert f"closed connection unanswered: {5 + REFUSAL_HEADROOM} connections open" in live.log()
    for held_reader, _ in held:
        assert await answer_then_closed(held_reader, bound + SLACK) == b""
    subscriber = await authenticated(live, ["after"])
    await still_delivers(live, [subscriber], "after")
    await subscriber.close()
