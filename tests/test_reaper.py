"""The reaper against a live server: quiet clients that answer pings stay, vanished peers go."""

from __future__ import annotations

import asyncio

import pytest

from bifrost.connection import CLOSE_HANDSHAKE_TIMEOUT
from tests.clients import authenticated, post_broadcast, receive_json, wait_for_connected
from tests.live import BifrostServer, broadcast_token
from tests.raw_peer import RawPeer

LIVENESS_ENV = {"BIFROST_PING_INTERVAL": "0.4", "BIFROST_IDLE_TIMEOUT": "1.2"}


@pytest.fixture(scope="module")
def quick_reaper(log_dir) -> BifrostServer:
    live = BifrostServer(log_dir, LIVENESS_ENV, name="reaper").start()
    yield live
    live.stop()
    live.assert_log_clean()


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
    peer = await asyncio.to_thread(RawPeer, quick_reaper, ["vanishing"])
    await asyncio.sleep(0.2)
    assert quick_reaper.stats()["connected"] == before["connected"] + 1
    close = await asyncio.to_thread(peer.close_frame_received, 4.0)
    assert close is not None and (close.code, close.reason) == (1001, "Idle timeout")
    await wait_for_connected(quick_reaper, before["connected"], timeout=CLOSE_HANDSHAKE_TIMEOUT + 1)
    token = broadcast_token({"event": "anyone"}, channel="vanishing")
    assert (await post_broadcast(quick_reaper, token)).json()["deliveries"] == 0
    peer.sock.close()
