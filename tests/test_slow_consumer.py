"""Back-pressure: a subscriber that stops reading is closed and never holds up the others."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.clients import authenticated, wait_for_connected
from tests.live import BifrostServer, broadcast_token, subscribe_token

PENDING_LIMIT = 256 * 1024
MESSAGE = "x" * 60_000
BROADCASTS = 400  # 24 MB: more than the kernel's socket buffers on both sides can hide


async def wait_for_log(server: BifrostServer, text: str, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while text not in server.log():
        assert asyncio.get_running_loop().time() < deadline, f"{text!r} never logged"
        await asyncio.sleep(0.02)


async def drain(ws) -> int:
    """Read every frame until the connection closes; how many arrived."""
    received = 0
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 5)
            received += 1
    return received


async def test_stalled_subscriber_is_closed_and_others_get_everything(start_server):
    """A subscriber over the pending bound is closed `Slow consumer`; the others miss nothing."""
    live = start_server({"BIFROST_MAX_PENDING_BYTES": str(PENDING_LIMIT)})
    healthy = [await authenticated(live, ["firehose"]) for _ in range(3)]
    stalled = await connect(live.ws_url, max_queue=1)
    await stalled.send(json.dumps({"event": "authenticate", "data": subscribe_token(["firehose"])}))

    async def read_all(ws) -> list[int]:
        return [
            json.loads(await asyncio.wait_for(ws.recv(), 10))["data"]["n"]
            for _ in range(BROADCASTS)
        ]

    async def resume_once_closed() -> None:
        # The stalled client reads again as soon as the server gave up on it, so that it
        # reaches the close frame behind its backlog before the handshake times out.
        await wait_for_log(live, "closing slow consumer", timeout=30)
        await drain(stalled)

    readers = [asyncio.create_task(read_all(ws)) for ws in healthy]
    stalled_reader = asyncio.create_task(resume_once_closed())
    deliveries = []
    async with httpx.AsyncClient(base_url=live.url) as http:
        for n in range(BROADCASTS):
            token = broadcast_token(
                {"event": "big", "data": {"n": n, "blob": MESSAGE}}, channel="firehose"
            )
            response = await http.post("/broadcast", json={"token": token})
            assert response.status_code == 200
            deliveries.append(response.json()["deliveries"])
    for reader in readers:
        assert await reader == list(range(BROADCASTS)), "a healthy subscriber missed or reordered"
    assert deliveries[0] == 4 and deliveries[-1] == 3, "the stalled socket stops counting"
    await stalled_reader
    assert (stalled.close_code, stalled.close_reason) == (1008, "Slow consumer")
    await wait_for_connected(live, 3, timeout=3)
    for ws in healthy:
        await ws.close()
