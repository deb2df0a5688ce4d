"""The original README's whole flow, end to end, as an existing user's code runs it."""

from __future__ import annotations

import json
import time

import httpx
import jwt
from websockets.asyncio.client import connect

from tests.live import SECRET, BifrostServer


async def test_readme_flow(server: BifrostServer):
    """Token minted by the app, subscribe, broadcast, the message arrives, /info.json counts it."""
    before = server.stats()
    # 1. The application's token endpoint: channels the user may hear, HS512, no exp.
    user_token = jwt.encode({"channels": ["user:1", "global"]}, SECRET, "HS512")
    # 2. The browser: open, authenticate, expect `subscribed` per channel, ping, get pong.
    async with connect(server.ws_url) as ws:
        await ws.send(json.dumps({"event": "authenticate", "data": user_token}))
        subscribed = [json.loads(await ws.recv()) for _ in range(2)]
        assert [json.loads(m["data"])["channel"] for m in subscribed] == ["user:1", "global"]
        await ws.send(json.dumps({"event": "ping"}))
        assert json.loads(await ws.recv())["event"] == "pong"
        assert server.stats()["connected"] == before["connected"] + 1
        # 3. The application's server: sign a message with exp and POST it as {token: jwt}.
        item = {"id": 42, "title": "Bifröst"}
        data = {
            "channel": "user:1",
            "message": {"event": "new_item", "data": json.dumps(item)},
            "exp": int(time.time()) + 3600,
        }
        broadcast = jwt.encode(data, SECRET, "HS512")
        response = httpx.post(f"{server.url}/broadcast", json={"token": broadcast})
        assert response.status_code <= 206, "the README's server raises above 206"
        assert response.json() == {"message": "Success", "deliveries": 1}
        # The browser's onmessage: JSON.parse(msg.data) gives the item back.
        msg = json.loads(await ws.recv())
        assert msg["event"] == "new_item"
        assert json.loads(msg["data"]) == item
    stats = httpx.get(f"{server.url}/info.json").json()["stats"]
    assert stats["deliveries"] == before["deliveries"] + 1
