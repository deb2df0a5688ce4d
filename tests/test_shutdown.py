"""Graceful shutdown: every socket hears 1012 so that clients reconnect to a live instance."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.clients import authenticated
from tests.live import BifrostServer, broadcast_token
from tests.raw_peer import RawPeer

# Every signal a platform, a supervisor or a terminal sends to stop a service.
STOP_SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT]
GRACEFUL_TIMEOUT = 5.0
# The multiprocessing helpers (resource tracker) leave a moment after the main process.
GROUP_EXIT_TIMEOUT = 5.0
LAUNCHES: dict[str, dict[str, Any]] = {
    "sanic-worker": {"args": ()},
    "python-m-bifrost": {"entry_point": True},
}


async def listen(ws, seen: set[int]) -> tuple[int | None, str | None]:
    """Note every message's `data` until the server closes the socket; its close code and reason."""
    with pytest.raises(ConnectionClosed):
        while True:
            seen.add(json.loads(await asyncio.wait_for(ws.recv(), 10))["data"])
    return ws.close_code, ws.close_reason


async def post_until_refused(
    live: BifrostServer,
    channel: str,
    answers: dict[int, int | None],
    lane: int = 0,
    lanes: int = 1,
    answered: asyncio.Event | None = None,
) -> None:
    """Broadcast numbers until the server refuses: 503, or no longer taking connections.

    Each answer must be 200 or 503 (`answers` keeps its `deliveries`); `answered` is set
    once a broadcast has been delivered, so that the caller can stop the server mid-stream.
    """
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        for n in range(lane, 100_000, lanes):
            token = broadcast_token({"event": "seq", "data": n}, channel=channel)
            try:
                response = await http.post("/broadcast", json={"token": token})
            except httpx.TransportError:
                return  # the server stopped accepting: this message was never taken
            assert response.status_code in {200, 503}, response.text
            answers[n] = response.json().get("deliveries")
            if response.status_code == 503:
                # Told to retry elsewhere: this connection goes with its instance.
                assert response.headers["connection"] == "close"
                return
            if answered is not None:
                answered.set()


def group_left_running(live: BifrostServer, timeout: float = GROUP_EXIT_TIMEOUT) -> list[int]:
    """The processes of the server's group still running once `timeout` has passed, if any."""
    deadline = time.monotonic() + timeout
    while (left := live.group_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


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
    listeners = [
        asyncio.create_task(listen(ws, seen)) for ws, seen in zip(sockets, received, strict=True)
    ]
    posters = [
        asyncio.create_task(post_until_refused(live, "load", answers, lane, lanes=2))
        for lane in (0, 1)
    ]
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


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda sig: sig.name)
@pytest.mark.parametrize(
    ("launch", "target"),
    [("sanic-worker", "main"), ("sanic-worker", "group"), ("python-m-bifrost", "main")],
)
async def test_every_stop_signal_shuts_down_gracefully(start_server, sig, launch, target):
    """TERM, INT, HUP or QUIT, to the main process or its whole group: 1012 to every socket,
    the broadcasts in flight answered truthfully, exit 0 in time, and no process left."""
    env = {"SANIC_GRACEFUL_SHUTDOWN_TIMEOUT": str(GRACEFUL_TIMEOUT)}
    live = start_server(env, name=f"stop-{sig.name}-{target}", **LAUNCHES[launch])
    ws = await authenticated(live, ["leaving"])
    received: set[int] = set()
    answers: dict[int, int | None] = {}
    answered = asyncio.Event()
    listener = asyncio.create_task(listen(ws, received))
    poster = asyncio.create_task(post_until_refused(live, "leaving", answers, answered=answered))
    await asyncio.wait_for(answered.wait(), 10)
    started = time.monotonic()
    if target == "group":
        os.killpg(live.process.pid, sig)
    else:
        live.process.send_signal(sig)
    assert await listener == (1012, "Service restart")
    await asyncio.wait_for(poster, GRACEFUL_TIMEOUT)
    exit_code = await asyncio.to_thread(live.process.wait, 2 * GRACEFUL_TIMEOUT)
    assert exit_code == 0
    assert time.monotonic() - started < GRACEFUL_TIMEOUT
    for n, deliveries in answers.items():
        assert deliveries in {None, int(n in received)}, f"broadcast {n} miscounted"
    assert await asyncio.to_thread(group_left_running, live) == []


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT], ids=lambda sig: sig.name)
async def test_hup_or_quit_to_a_worker_alone_stops_it_as_term_does(start_server, sig):
    """HUP or QUIT sent to one worker stop it gracefully, as TERM does: its sockets hear 1012."""
    live = start_server(args=(), name=f"worker-{sig.name}")
    ws = await authenticated(live, ["leaving"])
    [worker] = live.workers()
    os.kill(worker, sig)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    assert (ws.close_code, ws.close_reason) == (1012, "Service restart")
