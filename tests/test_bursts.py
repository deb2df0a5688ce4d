"""Bursts: many broadcasts in one loop turn reach every socket complete and in order, and the
slow-consumer bound still holds (`bifrost/rules/registry.py` gathers a turn's frames)."""

from __future__ import annotations

import asyncio
import json

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tests.clients import authenticated, receive_json, wait_for_connected
from tests.live import broadcast_token, subscribe_token
from tests.test_slow_consumer import drain, wait_for_log

LANES = 8
PER_LANE = 60


async def post_lanes(url: str, per_lane: int, blob: str = "") -> list[int]:
    """Broadcast from `LANES` keep-alive connections at once, each as fast as it is answered;
    every answer's `deliveries`."""

    async def lane(index: int) -> list[int]:
        async with httpx.AsyncClient(base_url=url) as http:
            answers = []
            for n in range(per_lane):
                message = {"event": "burst", "data": {"lane": index, "n": n, "blob": blob}}
                token = broadcast_token(message, channel="burst")
                response = await http.post("/broadcast", json={"token": token})
                assert response.status_code == 200
                answers.append(response.json()["deliveries"])
            return answers

    lanes = await asyncio.gather(*(lane(i) for i in range(LANES)))
    return [answer for answers in lanes for answer in answers]


async def read_burst(ws: ClientConnection, total: int) -> list[dict[str, object]]:
    return [await asyncio.wait_for(receive_json(ws), 10) for _ in range(total)]


async def test_concurrent_broadcasts_arrive_complete_and_in_order(start_server):
    """Under broadcasts from 8 connections at once every socket gets each message once, each
    sender's in the order it sent them, and a positioned socket sees the offsets 1, 2, 3, …"""
    live = start_server({"BIFROST_HISTORY_SIZE": "1000"})
    plain = [await authenticated(live, ["burst"]) for _ in range(5)]
    positioned = await connect(live.ws_url)
    token = subscribe_token(["burst"])
    await positioned.send(json.dumps({"event": "authenticate", "data": token, "since": {}}))
    assert (await receive_json(positioned))["event"] == "subscribed"
    total = LANES * PER_LANE
    readers = [asyncio.create_task(read_burst(ws, total)) for ws in [*plain, positioned]]
    deliveries = await post_lanes(live.url, PER_LANE)
    assert deliveries == [6] * total
    for reader in readers:
        frames = await reader
        data = [frame["data"] for frame in frames]
        for lane in range(LANES):
            assert [d["n"] for d in data if d["lane"] == lane] == list(range(PER_LANE))
    offsets = [frame["positions"]["burst"]["offset"] for frame in frames]  # type: ignore[index]
    assert offsets == list(range(1, total + 1)), "the positioned socket's frames keep their order"
    assert live.stats()["deliveries"] == 6 * total
    for ws in [*plain, positioned]:
        await ws.close()


async def test_a_socket_that_stops_reading_during_bursts_is_closed(start_server):
    """A subscriber that stops reading while broadcasts come from 8 connections at once is
    closed `Slow consumer`; the others get every message."""
    live = start_server({"BIFROST_MAX_PENDING_BYTES": str(256 * 1024)})
    healthy = [await authenticated(live, ["burst"]) for _ in range(2)]
    stalled = await connect(live.ws_url, max_queue=1)
    await stalled.send(json.dumps({"event": "authenticate", "data": subscribe_token(["burst"])}))
    per_lane = 50  # 400 messages of 60 KB: 24 MB, more than the socket buffers hide
    total = LANES * per_lane

    async def resume_once_closed() -> None:
        await wait_for_log(live, "closing slow consumer", timeout=30)
        await drain(stalled)

    readers = [asyncio.create_task(read_burst(ws, total)) for ws in healthy]
    stalled_reader = asyncio.create_task(resume_once_closed())
    deliveries = await post_lanes(live.url, per_lane, blob="x" * 60_000)
    for reader in readers:
        data = [frame["data"] for frame in await reader]
        for lane in range(LANES):
            assert [d["n"] for d in data if d["lane"] == lane] == list(range(per_lane))
    assert deliveries.count(3) < total and 2 in deliveries, "the stalled socket stops counting"
    await stalled_reader
    assert (stalled.close_code, stalled.close_reason) == (1008, "Slow consumer")
    await wait_for_connected(live, 2, timeout=3)
    for ws in healthy:
        await ws.close()
