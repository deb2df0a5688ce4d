"""The reaper against a live server: quiet clients that answer pings stay, vanished peers go."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Close
from websockets.protocol import State
from websockets.uri import parse_uri

from bifrost.connection import CLOSE_HANDSHAKE_TIMEOUT
from tests.clients import authenticated, post_broadcast, receive_json, wait_for_connected
from tests.live import BifrostServer, broadcast_token, subscribe_token

LIVENESS_ENV = {"BIFROST_PING_INTERVAL": "0.4", "BIFROST_IDLE_TIMEOUT": "1.2"}


@pytest.fixture(scope="module")
def quick_reaper(log_dir) -> BifrostServer:
    live = BifrostServer(log_dir, LIVENESS_ENV, name="reaper").start()
    yield live
    live.stop()
    live.assert_log_clean()


class VanishedPeer:
    """A client that completes the handshake and authenticates, then never reads or answers.

    Built on the sans-I/O protocol of `websockets` over a plain socket, so that nothing in it
    replies to the server's pings: the peer of a laptop that closed its lid.
    """

    def __init__(self, server: BifrostServer, channels: list[str]) -> None:
        self.protocol = ClientProtocol(parse_uri(server.ws_url))
        self.sock = socket.create_connection(("127.0.0.1", server.port))
        request = self.protocol.connect()
        self.protocol.send_request(request)
        self._flush()
        self._receive_until(lambda: self.protocol.state is State.OPEN)
        self.protocol.send_text(
            json.dumps({"event": "authenticate", "data": subscribe_token(channels)}).encode()
        )
        self._flush()

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def _receive_until(self, done, timeout: float = 5.0) -> None:
        self.sock.settimeout(timeout)
        while not done():
            data = self.sock.recv(65536)
            if not data:
                self.protocol.receive_eof()
                return
            self.protocol.receive_data(data)

    def close_frame_received(self, timeout: float) -> Close | None:
        """Read what the server sent (pings go unanswered) until its close frame or timeout."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            self.protocol.receive_data(data)
            self.protocol.data_to_send()  # the pongs and close reply this peer never sends
            if self.protocol.close_rcvd is not None:
                return self.protocol.close_rcvd
        return self.protocol.close_rcvd


async def test_client_answering_pings_stays_connected_while_silent(quick_reaper: BifrostServer):
    """A client that answers protocol pings stays connected however long it says nothing."""
    ws = await authenticated(quick_reaper, ["quiet"])
    await asyncio.sleep(3.0)  # more than twice the idle timeout, not one frame sent
    token = broadcast_token({"event": "still-there"}, channel="quiet")
    assert (await post_broadcast(quick_reaper, token)).json()["deliveries"] == 1
    assert await receive_json(ws) == {"event": "still-there"}
    await ws.close()


async def test_vanished_peer_is_closed_idle_and_forgotten(quick_reaper: BifrostServer):
    """A peer that never answers is closed with 1001 `Idle timeout`, leaving channels and stats."""
    before = quick_reaper.stats()
    peer = await asyncio.to_thread(VanishedPeer, quick_reaper, ["vanishing"])
    await asyncio.sleep(0.2)
    assert quick_reaper.stats()["connected"] == before["connected"] + 1
    close = await asyncio.to_thread(peer.close_frame_received, 4.0)
    assert close is not None and (close.code, close.reason) == (1001, "Idle timeout")
    await wait_for_connected(quick_reaper, before["connected"], timeout=CLOSE_HANDSHAKE_TIMEOUT + 1)
    token = broadcast_token({"event": "anyone"}, channel="vanishing")
    assert (await post_broadcast(quick_reaper, token)).json()["deliveries"] == 0
    peer.sock.close()
