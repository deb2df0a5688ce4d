"""`/subscribe` at the level of frames, from a client no browser would be: pipelined frames,
fragmented messages, broken text and a flood, against a live server."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from websockets.frames import Opcode

from bifrost.connection import CLOSE_HANDSHAKE_TIMEOUT
from tests.clients import authenticated, post_broadcast, receive_json, wait_for_connected
from tests.live import BifrostServer, broadcast_token
from tests.raw_peer import RawPeer, authenticate_frame, close_frame, masked_frame

PING = masked_frame(b'{"event":"ping"}')
PONG = '{"event":"pong"}'
FLOOD_SECONDS = 1.0  # less than the closing handshake's timeout: the close frame is still there
FLOOD_RSS_GROWTH_LIMIT = 20 * 1024 * 1024


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def test_frames_pipelined_behind_the_handshake_are_served(server: BifrostServer):
    """Frames written in the same packet as the upgrade request are read, in order."""
    pipelined = authenticate_frame(["piped"]) + PING
    peer = await asyncio.to_thread(RawPeer, server, pipelined=pipelined)
    try:
        subscribed, pong = await asyncio.to_thread(peer.texts_received, 2)
        assert json.loads(json.loads(subscribed)["data"]) == {"channel": "piped"}
        assert pong == PONG
    finally:
        peer.close()


async def test_upgrade_request_with_a_body_is_refused_400(server: BifrostServer):
    """An upgrade request that announces a body is refused, and the socket not taken over."""
    request = (
        "GET /subscribe HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
        "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nContent-Length: 5\r\n\r\nhello"
    )

    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(request.encode())
            return sock.recv(65536)

    answer = await asyncio.to_thread(exchange)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.endswith(b'{"error":"A websocket upgrade request has no body"}')


async def test_fragmented_message_is_joined(server: BifrostServer):
    """A message split over a text frame and continuation frames is read as one."""
    peer = await asyncio.to_thread(RawPeer, server)
    try:
        fragments = (
            masked_frame(b'{"eve', fin=False)
            + masked_frame(b'nt":"pi', Opcode.CONT, fin=False)
            + masked_frame(b'ng"}', Opcode.CONT)
        )
        await asyncio.to_thread(peer.send, fragments)
        assert await asyncio.to_thread(peer.texts_received, 1) == [PONG]
    finally:
        peer.close()


async def test_fragmented_message_over_the_frame_limit_closes_1009(server: BifrostServer):
    """Fragments each under BIFROST_MAX_FRAME_BYTES (4096 here) but over it together: 1009."""
    peer = await asyncio.to_thread(RawPeer, server)
    try:
        chunk = b" " * 3000
        fragments = masked_frame(chunk, fin=False) + masked_frame(chunk, Opcode.CONT)
        await asyncio.to_thread(peer.send, fragments)
        close = await asyncio.to_thread(peer.close_frame_received, 5.0)
        assert close is not None and close.code == 1009
    finally:
        peer.close()


async def test_text_that_is_not_utf8_closes_1007(server: BifrostServer):
    """A text frame that is not UTF-8 breaks the websocket protocol: closed with 1007."""
    peer = await asyncio.to_thread(RawPeer, server)
    try:
        await asyncio.to_thread(peer.send, masked_frame(b'{"event":"\xff"}'))
        close = await asyncio.to_thread(peer.close_frame_received, 5.0)
        assert close is not None and (close.code, close.reason) == (
            1007,
            "Text frames must be UTF-8",
        )
    finally:
        peer.close()


async def test_fragmented_binary_message_closes_1003_at_its_first_frame(server: BifrostServer):
    """The first frame of a fragmented binary message closes the socket with 1003: the server
    does not gather fragments it would only refuse."""
    peer = await asyncio.to_thread(RawPeer, server)
    try:
        await asyncio.to_thread(peer.send, masked_frame(b"\x00" * 1000, Opcode.BINARY, fin=False))
        close = await asyncio.to_thread(peer.close_frame_received, 5.0)
        assert close is not None and (close.code, close.reason) == (
            1003,
            "Binary frames are not accepted",
        )
    finally:
        peer.close()


async def test_flooding_client_is_closed_and_starves_nobody(server: BifrostServer):
    """A client writing frames as fast as it can is closed with 1008 `Rate limit` and read no
    further: the server's memory stays flat, and a subscriber beside it hears every broadcast."""
    assert server.process is not None
    healthy = await authenticated(server, ["beside-the-flood"])
    flooder = await asyncio.to_thread(RawPeer, server)
    rss_before = resident_bytes(server.process.pid)
    flood = asyncio.create_task(
        asyncio.to_thread(flooder.flood, masked_frame(b'{"event":"typing"}'), FLOOD_SECONDS)
    )
    try:
        async with healthy:
            for sequence in range(20):
                message = {"event": "tick", "data": str(sequence)}
                token = broadcast_token(message, channel="beside-the-flood")
                assert (await post_broadcast(server, token)).json()["deliveries"] == 1
                assert await receive_json(healthy) == message
            await flood
        rss_growth = resident_bytes(server.process.pid) - rss_before
        close = await asyncio.to_thread(flooder.close_frame_received, 5.0)
        assert close is not None and (close.code, close.reason) == (1008, "Rate limit")
        assert rss_growth < FLOOD_RSS_GROWTH_LIMIT
    finally:
        flooder.close()


@pytest.mark.parametrize("ending", ["close frame", "half-close"])
async def test_peer_that_stops_reading_then_leaves_is_dropped(start_server, ending: str):
    """A subscriber that stops reading is closed as a slow consumer; when it then answers the
    close or half-closes, with the server's last bytes still unsent, the server drops it
    within the closing handshake's time instead of waiting for it to read them."""
    live = start_server({"BIFROST_MAX_PENDING_BYTES": "200000"})
    peer = await asyncio.to_thread(RawPeer, live, ["stalled"], receive_buffer=2048)
    try:
        await asyncio.to_thread(peer.texts_received, 1)
        message = {"event": "big", "data": "x" * 30_000}
        token = broadcast_token(message, channel="stalled")
        for _ in range(100):
            if (await post_broadcast(live, token)).json()["deliveries"] == 0:
                break  # closed as a slow consumer
        else:
            raise AssertionError("the stalled subscriber was never closed")
        if ending == "close frame":
            await asyncio.to_thread(peer.send, close_frame())
        else:
            peer.sock.shutdown(socket.SHUT_WR)
        await wait_for_connected(live, 0, timeout=CLOSE_HANDSHAKE_TIMEOUT + 2)
    finally:
        peer.close()


@pytest.mark.parametrize("version", ["8", "7", "14", "13, 8", "thirteen", None])
async def test_unsupported_websocket_version_gets_426_naming_13(
    server: BifrostServer, version: str | None
):
    """A handshake with another (or no) `Sec-WebSocket-Version` gets 426 Upgrade Required and
    `Sec-WebSocket-Version: 13`, the version to retry with (RFC 6455 §4.2.2)."""
    request = (
        "GET /subscribe HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
        "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        + ("" if version is None else f"Sec-WebSocket-Version: {version}\r\n")
        + "\r\n"
    )

    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(request.encode())
            return sock.recv(65536)

    head, _, body = (await asyncio.to_thread(exchange)).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    assert status_line.startswith("HTTP/1.1 426 ")
    assert headers["sec-websocket-version"] == "13"
    assert headers["upgrade"] == "websocket"
    assert "Sec-WebSocket-Version" in json.loads(body)["error"]
