"""Graceful shutdown: every socket hears 1012 so that clients reconnect to a live instance."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.clients import authenticated
from tests.live import broadcast_token
from tests.raw_peer import RawPeer


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("args", [("--single-process",), ()], ids=["single-process", "worker"])
async def test_shutdown_closes_every_socket_with_1012(start_server, sig, args):
    """On SIGTERM or SIGINT every socket is closed with 1012 and the process exits promptly."""
    live = start_server(args=args)
    sockets = [await authenticated(live, ["leaving", f"own:{n}"]) for n in range(3)]
    live.process.send_signal(sig)
    for ws in sockets:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert (ws.close_code, ws.close_reason) == (1012, "Service restart")
    exit_code = await asyncio.to_thread(live.process.wait, 15)
    assert exit_code == 0


async def test_shutdown_under_load_answers_truthfully(start_server):
    """SIGTERM mid-stream: sockets get 1012, each answered POST tells its true deliveries."""
    live = start_server({"SANIC_GRACEFUL_SHUTDOWN_TIMEOUT": "5"})
    sockets = [await authenticated(live, ["load"]) for _ in range(5)]
    received: list[set[int]] = [set() for _ in sockets]
    answers: dict[int, int | None] = {}

    async def listen(ws, seen: set[int]) -> tuple[int | None, str | None]:
        with pytest.raises(ConnectionClosed):
            while True:
                seen.add(json.loads(await asyncio.wait_for(ws.recv(), 10))["data"])
        return ws.close_code, ws.close_reason

    async def post_until_refused(lane: int) -> None:
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
            for n in range(lane, 100_000, 2):
                token = broadcast_token({"event": "seq", "data": n}, channel="load")
                try:
                    response = await http.post("/broadcast", json={"token": token})
                except httpx.TransportError:
                    return  # the server stopped accepting: this message was never taken
                assert response.status_code in {200, 503}, response.text
                answers[n] = response.json().get("deliveries")
                if response.status_code == 503:
                    return

    listeners = [
        asyncio.create_task(listen(ws, seen)) for ws, seen in zip(sockets, received, strict=True)
    ]
    posters = [asyncio.create_task(post_until_refused(lane)) for lane in (0, 1)]
    await asyncio.sleep(0.5)
    started = time.monotonic()
    live.process.send_signal(signal.SIGTERM)
    closes = await asyncio.gather(*listeners)
    await asyncio.gather(*posters)
    exit_code = await asyncio.to_thread(live.process.wait, 10)
    assert time.monotonic() - started < 5
    assert exit_code == 0
    assert closes == [(1012, "Service restart")] * len(sockets)
    delivered = [n for n, deliveries in answers.items() if deliveries is not None]
    assert len(delivered) > 20, "broadcasts were in flight when the signal came"
    for n in delivered:
        assert answers[n] == sum(n in seen for seen in received), f"broadcast {n} miscounted"


async def test_handshakes_while_stopping_are_refused_503(start_server):
    """While its sockets finish their closing handshakes, a stopping server refuses new ones
    with 503, so that clients reconnect to a live instance instead of to one that is leaving."""
    live = start_server()
    # A peer that never answers the close frame keeps the closing handshakes going for 2 s.
    silent = await asyncio.to_thread(RawPeer, live, ["leaving"])
    try:
        live.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        with pytest.raises(InvalidStatus) as refused:
            async with connect(live.ws_url):
                pass
        assert refused.value.response.status_code == 503
        close = await asyncio.to_thread(silent.close_frame_received, 5.0)
        assert close is not None and close.code == 1012
    finally:
        silent.close()
    assert await asyncio.to_thread(live.process.wait, 15) == 0
