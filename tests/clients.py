"""Client helpers shared by the live tests: what a browser and an application server do."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tests.live import BifrostServer, subscribe_token

__all__ = [
    "RECEIVE_TIMEOUT",
    "authenticated",
    "post_broadcast",
    "receive_json",
    "wait_for_connected",
]

RECEIVE_TIMEOUT = 5.0


async def receive_json(ws: ClientConnection, timeout: float = RECEIVE_TIMEOUT) -> Any:
    """The next frame from the server, parsed."""
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def authenticated(server: BifrostServer, channels: Sequence[str]) -> ClientConnection:
    """A socket that has authenticated and seen one `subscribed` frame per channel."""
    ws = await connect(server.ws_url)
    await ws.send(json.dumps({"event": "authenticate", "data": subscribe_token(channels)}))
    for _ in dict.fromkeys(channels):
        frame = await receive_json(ws)
        assert frame["event"] == "subscribed"
    return ws


async def post_broadcast(server: BifrostServer, token: str) -> httpx.Response:
    """POST a broadcast token the way the original README's server code does."""
    async with httpx.AsyncClient(base_url=server.url) as http:
        return await http.post("/broadcast", json={"token": token})


async def wait_for_connected(server: BifrostServer, expected: int, timeout: float) -> None:
    """Wait until `/info.json` counts `expected` connections; fail with the last count."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (connected := server.stats()["connected"]) != expected:
        assert asyncio.get_running_loop().time() < deadline, (
            f"{connected} connected, not {expected}"
        )
        await asyncio.sleep(0.05)
