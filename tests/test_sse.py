"""Server-sent events on `GET /subscribe`, against live servers, read as `curl -N` reads them.

An event stream is a positioned subscription carried as events: each test compares what it
gets with what a positioned websocket gets on the same server, or states the rule it checks
for streams alone (the answers before a stream starts, the slow reader, shutdown, the log).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.clients import post_broadcast, wait_for_connected
from tests.event_streams import EventStreamReader, RawStreamPeer, open_stream
from tests.live import SECRET, BifrostServer, broadcast_token, subscribe_token
from tests.raw_peer import RawPeer
from tests.redis_server import RedisServer
from tests.test_history import HISTORY, Node, Reader, broadcast, broker, node, redis_server
from tests.test_logs import assert_no_secret_in
from tests.test_slow_consumer import wait_for_log

__all__ = ["broker", "node", "redis_server"]  # the fixtures, shared with the history tests


async def stream_of(server: BifrostServer, channels: list[str], **kwargs: Any) -> EventStreamReader:
    """An event stream of the channels that has heard its `subscribed` events."""
    reader = await open_stream(server, subscribe_token(channels), **kwargs)
    assert reader.response.status_code == 200, await reader.response.aread()
    for channel in channels:
        subscribed = (await reader.next()).json()
        assert subscribed["event"] == "subscribed"
        assert json.loads(subscribed["data"]) == {"channel": channel}
    return reader


async def test_a_stream_carries_a_positioned_websockets_frames_as_events(node: Node):
    """200 text/event-stream, neither cached nor buffered, a `retry:` up front; then each
    frame a positioned websocket gets on the same server, `subscribed` ones included, as one
    event whose data is that frame's JSON and whose id moves with every position."""
    live = node()
    reader = await open_stream(live, subscribe_token(["room", "lobby"]))
    websocket = Reader(["room", "lobby"])
    await websocket.connect(live)
    response = reader.response
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    subscribed = [await reader.next() for _ in range(2)]
    assert reader.retry is not None and 1000 <= reader.retry <= 3000
    assert [e.json() for e in subscribed] == list(websocket.subscribed.values())
    await broadcast(live, "to the room", "room")
    await broadcast(live, "to both", "lobby", "room")
    events = [await reader.next() for _ in range(2)]
    assert [e.json() for e in events] == [await websocket.receive() for _ in range(2)]
    ids = [e.last_id for e in (*subscribed, *events)]
    assert all(e.has_id for e in (*subscribed, *events))
    assert len(set(ids)) == 4, "each event's id says a new position"
    assert not any(name in ids[-1] for name in ("room", "lobby")), "ids name no channel"
    await websocket.close()
    await reader.close()


async def test_the_token_may_come_as_a_bearer_header(server: BifrostServer):
    """`Authorization: Bearer <jwt>`, as `curl -H` or a server sends it, opens a stream too."""
    token = subscribe_token(["bearer"])
    reader = await open_stream(server, headers={"authorization": f"Bearer {token}"})
    assert reader.response.status_code == 200
    assert json.loads((await reader.next()).json()["data"]) == {"channel": "bearer"}
    await reader.close()


@pytest.mark.parametrize(
    "token",
    [
        None,
        "not-a-token",
        subscribe_token(["a"], secret="another-secret-" + "o" * 49),
        subscribe_token(["a"], exp=int(time.time()) - 60),
        broadcast_token({"event": "e"}, channel="a"),
        subscribe_token([]),
    ],
    ids=["missing", "garbage", "wrong-secret", "expired", "broadcast-token", "no-channels"],
)
async def test_a_missing_or_bad_token_gets_401_before_any_stream(server: BifrostServer, token):
    """EventSource then stops for good; the page reopens it with a fresh token (README)."""
    reader = await open_stream(server, token)
    assert reader.response.status_code == 401
    assert reader.response.headers["content-type"] == "application/json"
    assert json.loads(await reader.response.aread()) == {"error": "Not Authorized"}
    await reader.close()


async def test_a_foreign_origin_gets_403_and_an_allowed_one_may_read_the_stream(
    server: BifrostServer,
):
    """A page of an origin outside BIFROST_ALLOWED_ORIGINS is refused; an allowed page is
    let read the stream across origins (EventSource is bound by CORS)."""
    token = subscribe_token(["cors"])
    foreign = await open_stream(server, token, headers={"origin": "https://evil.example.net"})
    assert foreign.response.status_code == 403
    assert json.loads(await foreign.response.aread()) == {"error": "Origin not allowed"}
    await foreign.close()
    allowed = await open_stream(server, token, headers={"origin": "https://app.example.com"})
    assert allowed.response.status_code == 200
    assert allowed.response.headers["access-control-allow-origin"] == "https://app.example.com"
    await allowed.close()


async def test_a_plain_get_still_gets_426(server: BifrostServer):
    """Neither an upgrade nor asking for an event stream: told to upgrade, as before."""
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.get("/subscribe", params={"token": subscribe_token(["a"])})
    assert answer.status_code == 426
    assert answer.headers["upgrade"] == "websocket"


async def test_a_full_process_answers_200_with_a_retry_and_ends_the_stream(start_server):
    """Past BIFROST_MAX_CONNECTIONS a stream request hears when to come back, not a 503,
    which EventSource would take as final; the open stream keeps working."""
    live = start_server({"BIFROST_MAX_CONNECTIONS": "1"})
    first = await stream_of(live, ["full"])
    refused = await open_stream(live, subscribe_token(["full"]))
    assert refused.response.status_code == 200
    assert refused.response.headers["content-type"] == "text/event-stream"
    assert refused.response.headers["connection"] == "close"
    assert await refused.ended() == []
    assert refused.retry is not None and 1000 <= refused.retry <= 3000
    assert refused.comments == ["Too many connections, try another instance"]
    await refused.close()
    await broadcast(live, "still here", "full")
    assert (await first.next()).json() == {"event": "note", "data": "still here"}
    await first.close()
    assert "refused handshake: 1 connections open" in live.log()


async def test_shutdown_ends_every_stream_and_a_stopping_process_says_come_back(start_server):
    """On SIGTERM each stream ends, saying why, so that the browser reconnects (after its
    `retry:`) to a live instance; a stream asked for meanwhile hears when to come back."""
    live = start_server()
    streams = [await stream_of(live, ["leaving"]) for _ in range(2)]
    # A websocket peer that never answers its close frame keeps the process stopping for 2 s.
    silent = await asyncio.to_thread(RawPeer, live, ["leaving"])
    try:
        live.process.send_signal(signal.SIGTERM)
        for reader in streams:
            assert await reader.ended(10) == []
            assert reader.comments == ["Service restart"]
        refused = await open_stream(live, subscribe_token(["leaving"]))
        assert refused.response.status_code == 200
        assert await refused.ended() == []
        assert refused.comments == ["Shutting down, try another instance"]
        await refused.close()
    finally:
        silent.close()
        for reader in streams:
            await reader.close()
    assert await asyncio.to_thread(live.process.wait, 15) == 0


async def test_last_event_id_recovers_exactly_what_since_recovers_on_a_websocket(node: Node):
    """A stream and a websocket leave at the same point and come back: the stream from its
    `Last-Event-ID` alone, the websocket with its `since`. Both get the same frames: the missed
    messages in order and once (one sent to both channels once), then the live ones."""
    live = node()
    channels = ["left", "right"]
    stream = await stream_of(live, channels)
    websocket = Reader(channels)
    await websocket.connect(live)
    await broadcast(live, "seen", "left")
    assert (await stream.next()).json() == await websocket.receive()
    await stream.close()
    await websocket.close()
    for data, to in [("left 1", ["left"]), ("both", ["left", "right"]), ("right 1", ["right"])]:
        await broadcast(live, data, *to)
    again = await open_stream(live, subscribe_token(channels), last_event_id=stream.last_id)
    frames = await again.frames(5)
    expected = [
        *(await websocket.connect(live)).values(),
        *[await websocket.receive() for _ in range(3)],
    ]
    assert frames == expected
    assert [f["recovered"] for f in frames[:2]] == [True, True]
    assert [f["data"] for f in frames[2:]] == ["left 1", "both", "right 1"]
    await broadcast(live, "live", "right")
    assert await again.frames(1) == [await websocket.receive()]
    await websocket.nothing_more()
    assert again.pending() == 0
    await again.close()
    await websocket.close()


async def test_since_recovers_a_first_connection_and_last_event_id_wins(node: Node):
    """`?since=<id>` recovers from that id; with a `Last-Event-ID` too, the header wins, as
    when a browser reconnects to the URL the page opened with `?since=`."""
    live = node()
    stream = await stream_of(live, ["feed"])
    for n in range(4):
        await broadcast(live, n, "feed")
    events = [await stream.next() for _ in range(4)]
    await stream.close()
    await broadcast(live, 4, "feed")
    older, newer = events[1].last_id, events[3].last_id
    from_since = await open_stream(live, subscribe_token(["feed"]), since=older)
    assert [f.get("data") for f in await from_since.frames(4)][1:] == [2, 3, 4]
    await from_since.close()
    both = await open_stream(live, subscribe_token(["feed"]), since=older, last_event_id=newer)
    subscribed, recovered = await both.frames(2)
    assert subscribed["recovered"] is True and subscribed["positions"]["feed"]["offset"] == 4
    assert recovered["data"] == 4
    await broadcast(live, 5, "feed")
    assert [f["data"] for f in await both.frames(1)] == [5]
    await both.close()


@pytest.mark.parametrize("event_id", ["garbage", "AAAAAAAA.e.1~", "x" * 5000])
async def test_an_id_that_does_not_decode_is_recovered_false_for_every_channel(
    node: Node, event_id: str
):
    """Refusing it would stop EventSource for good, so the stream starts; since it cannot say
    what the client missed, every channel is `recovered: false`: the client reloads."""
    live = node()
    reader = await open_stream(live, subscribe_token(["a", "b"]), last_event_id=event_id)
    assert reader.response.status_code == 200
    frames = await reader.frames(2)
    assert [(json.loads(f["data"])["channel"], f["recovered"]) for f in frames] == [
        ("a", False),
        ("b", False),
    ]
    await broadcast(live, "live", "b")
    assert [f["data"] for f in await reader.frames(1)] == ["live"]
    await reader.close()


async def test_history_off_ids_still_name_the_channels_and_say_nothing_was_recovered(
    start_server,
):
    """Without history the frames are a websocket's with history off, and the stream's id
    names its channels all the same: a stream reconnecting with it hears `recovered: false`
    for each, since what was broadcast meanwhile is lost."""
    live = start_server()
    reader = await stream_of(live, ["a", "b"])
    assert reader.last_id, "the subscribed events carry an id"
    subscribed_id = reader.last_id
    token = broadcast_token({"event": "e", "data": 1}, channel="a")
    assert (await post_broadcast(live, token)).json() == {"message": "Success", "deliveries": 1}
    message = await reader.next()
    assert message.json() == {"event": "e", "data": 1}
    assert not message.has_id and message.last_id == subscribed_id
    await reader.close()
    again = await open_stream(live, subscribe_token(["a", "b"]), last_event_id=reader.last_id)
    assert [f for f in await again.frames(2)] == [
        {"event": "subscribed", "data": '{"channel":"a"}', "recovered": False},
        {"event": "subscribed", "data": '{"channel":"b"}', "recovered": False},
    ]
    await again.close()


async def test_a_stream_that_stops_reading_is_cut_and_the_others_get_everything(start_server):
    """A stream whose unsent bytes pass BIFROST_MAX_PENDING_BYTES is ended; the healthy
    streams and websockets of the channel miss nothing, and it stops counting."""
    live = start_server({"BIFROST_MAX_PENDING_BYTES": str(256 * 1024)})
    healthy = [await stream_of(live, ["firehose"]) for _ in range(3)]
    stalled = await asyncio.to_thread(
        RawStreamPeer, live, subscribe_token(["firehose"]), receive_buffer=4096
    )
    await asyncio.to_thread(stalled.read_until, b'"channel\\":\\"firehose')
    await wait_for_connected(live, 4, timeout=3)
    blob = "x" * 60_000
    count = 400  # 24 MB: more than the kernel's buffers on both sides can hide

    async def read_all(reader: EventStreamReader) -> list[int]:
        return [(await reader.next(10)).json()["data"]["n"] for _ in range(count)]

    readers = [asyncio.create_task(read_all(reader)) for reader in healthy]
    deliveries = []
    async with httpx.AsyncClient(base_url=live.url) as http:
        for n in range(count):
            token = broadcast_token(
                {"event": "big", "data": {"n": n, "blob": blob}}, channel="firehose"
            )
            answer = await http.post("/broadcast", json={"token": token})
            deliveries.append(answer.json()["deliveries"])
    for reader in readers:
        assert await reader == list(range(count)), "a healthy stream missed or reordered"
    assert deliveries[0] == 4 and deliveries[-1] == 3, "the stalled stream stops counting"
    await wait_for_log(live, "closing slow consumer of 127.0.0.1", timeout=5)
    assert await asyncio.to_thread(stalled.drain, 5.0), "the stalled stream was not ended"
    stalled.close()
    await wait_for_connected(live, 3, timeout=3)
    for reader in healthy:
        await reader.close()


async def test_streams_count_in_connected_deliveries_and_the_metrics(start_server):
    """A stream is a connection like a websocket: /info.json counts both and says how many of
    each, a broadcast's deliveries count it, and so do the metrics."""
    live = start_server()
    streams = [await stream_of(live, ["counted"]) for _ in range(2)]
    websocket = Reader(["counted"])
    await websocket.connect(live)
    stats = live.stats()
    assert (stats["connected"], stats["websockets"], stats["event_streams"]) == (3, 1, 2)
    assert stats["subscriptions"] == 3
    token = broadcast_token({"event": "e", "data": 1}, channel="counted")
    assert (await post_broadcast(live, token)).json()["deliveries"] == 3
    assert live.stats()["deliveries"] == 3
    metrics = httpx.get(f"{live.url}/metrics").text
    assert "bifrost_connections 3.0" in metrics
    assert "bifrost_event_streams 2.0" in metrics
    assert "bifrost_deliveries_total 3.0" in metrics
    await streams[0].close()
    await wait_for_connected(live, 2, timeout=3)
    assert live.stats()["event_streams"] == 1
    await streams[1].close()
    await websocket.close()


async def test_a_quiet_stream_gets_a_comment_every_ping_interval_and_no_idle_cut_off(
    start_server,
):
    """The client never speaks: a comment line every BIFROST_PING_INTERVAL keeps it alive,
    and it outlives BIFROST_IDLE_TIMEOUT many times over."""
    live = start_server({"BIFROST_PING_INTERVAL": "0.3", "BIFROST_IDLE_TIMEOUT": "0.6"})
    reader = await stream_of(live, ["quiet"])
    await asyncio.sleep(2.5)
    assert 5 <= reader.comments.count("") <= 10, reader.comments
    await broadcast(live, "after the silence", "quiet")
    assert (await reader.next()).json()["data"] == "after the silence"
    assert live.stats()["event_streams"] == 1
    await reader.close()


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_stream_token_ever_reaches_the_log(start_server, log_format: str):
    """Tokens in the URL, good and bad, and in the header, access logs on: none is logged,
    not even by the access lines that quote the URL."""
    live = start_server(
        {"BIFROST_LOG_FORMAT": log_format, **HISTORY},
        args=("--single-process", "--access-logs"),
        name=f"sse-logs-{log_format}",
    )
    good = subscribe_token(["secret-room"])
    stream = await stream_of(live, ["secret-room"])
    await stream.close()
    again = await open_stream(live, good, last_event_id=stream.last_id)
    assert again.response.status_code == 200
    await again.close()
    refused = [
        subscribe_token(["a"], secret="wrong-secret-" + "w" * 51),
        subscribe_token(["a"], exp=int(time.time()) - 60),
        jwt.encode({"channels": ["a"]}, SECRET, "HS256"),
        good[:-4] + "AAAA",
    ]
    for token in refused:
        reader = await open_stream(live, token)
        assert reader.response.status_code == 401
        await reader.close()
        reader = await open_stream(live, headers={"authorization": f"Bearer {token}"})
        assert reader.response.status_code == 401
        await reader.close()
    async with httpx.AsyncClient(base_url=live.url) as http:
        escaped = await http.get(f"/subscribe?%74oken={refused[0]}")
        assert escaped.status_code == 426
    live.stop()
    log = live.log()
    assert "authentication failed for 127.0.0.1: Bad signature" in log
    assert "token=[redacted]" in log, "access lines were written, the token taken out"
    assert "%74oken=[redacted]" in log
    assert_no_secret_in(log, [good, *refused])


async def test_the_readmes_curl_line_shows_the_stream(start_server):
    """The README's `curl -N` line, pointed at a live server with a real token, prints the
    `retry:`, the `subscribed` event and a broadcast as it comes."""
    live = start_server()
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    [line] = [text for text in readme.splitlines() if text.startswith("curl -N ")]
    command = line.replace("http://127.0.0.1:8000", live.url).replace(
        "eyJhbGciOiJIUzUxMiIs...", subscribe_token(["global"])
    )
    curl = await asyncio.create_subprocess_shell(
        f"timeout 3 {command}", stdout=asyncio.subprocess.PIPE
    )
    await wait_for_connected(live, 1, timeout=5)
    await broadcast(live, "seen by curl", "global")
    output, _ = await curl.communicate()
    lines = output.decode().splitlines()
    assert lines[0].startswith("retry: ")
    data = [json.loads(text.removeprefix("data: ")) for text in lines if text.startswith("data:")]
    assert data == [
        {"event": "subscribed", "data": '{"channel":"global"}'},
        {"event": "note", "data": "seen by curl"},
    ]


@pytest.mark.parametrize("broker", ["redis"])
async def test_a_stream_ends_when_its_node_loses_redis_and_resumes_by_its_id(
    node: Node, redis_server: RedisServer
):
    """A node that stops hearing Redis ends its event streams, saying why, so that the browser
    comes back and resumes from its last id (here to a Redis that kept nothing: not
    recovered) instead of missing messages unawares."""
    live = node()
    reader = await stream_of(live, ["room"])
    redis_server.stop()
    assert await reader.ended(10) == []
    assert reader.comments == ["Try again later"]
    await reader.close()
    redis_server.start()
    for _ in range(100):
        if httpx.get(f"{live.url}/readyz").status_code == 200:
            break
        await asyncio.sleep(0.1)
    again = await open_stream(live, subscribe_token(["room"]), last_event_id=reader.last_id)
    subscribed = (await again.next()).json()
    assert subscribed["event"] == "subscribed" and subscribed["recovered"] is False
    await broadcast(live, "after", "room")
    assert (await again.next()).json()["data"] == "after"
    await again.close()
