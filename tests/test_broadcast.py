"""`POST /broadcast` against a live server: delivery, counting and every refusal."""

from __future__ import annotations

import asyncio
import json

import httpx
import jwt
import pytest

from tests.clients import authenticated, post_broadcast, receive_json
from tests.live import SECRET, BifrostServer, broadcast_token


async def test_message_reaches_every_subscriber_as_sent(server: BifrostServer):
    """Every subscriber of the channel receives the JSON of `message`, keys and values as sent."""
    sockets = [await authenticated(server, ["room:1"]) for _ in range(3)]
    other = await authenticated(server, ["room:2"])
    message = {"event": "new_item", "data": json.dumps({"id": 7, "name": "ö"}), "extra": [1, None]}
    response = await post_broadcast(server, broadcast_token(message, channel="room:1"))
    assert response.status_code == 200
    assert response.json() == {"message": "Success", "deliveries": 3}
    for ws in sockets:
        assert await receive_json(ws) == message
        await ws.close()
    await other.send('{"event":"ping"}')
    assert await receive_json(other) == {"event": "pong"}, "room:2 must not hear room:1"
    await other.close()


async def test_channels_claim_delivers_once_per_socket(server: BifrostServer):
    """A `channels` broadcast reaches each socket once, however many of the channels it hears."""
    both = await authenticated(server, ["multi:a", "multi:b"])
    only_b = await authenticated(server, ["multi:b"])
    token = broadcast_token({"event": "fan", "data": 1}, channels=["multi:a", "multi:b"])
    assert (await post_broadcast(server, token)).json()["deliveries"] == 2
    for ws in (both, only_b):
        assert await receive_json(ws) == {"event": "fan", "data": 1}
    await both.send('{"event":"ping"}')
    assert await receive_json(both) == {"event": "pong"}, "no second copy before the pong"
    await both.close()
    await only_b.close()


async def test_broadcast_to_empty_channel_answers_zero_deliveries(server: BifrostServer):
    """A channel nobody hears is a success with zero deliveries."""
    token = broadcast_token({"event": "void"}, channel="nobody-here")
    assert (await post_broadcast(server, token)).json() == {"message": "Success", "deliveries": 0}


async def test_body_without_json_content_type_is_accepted(server: BifrostServer):
    """The body is read as JSON whatever its content type says."""
    ws = await authenticated(server, ["plain"])
    body = json.dumps({"token": broadcast_token({"event": "plain"}, channel="plain")})
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post(
            "/broadcast", content=body, headers={"content-type": "text/plain"}
        )
    assert response.json() == {"message": "Success", "deliveries": 1}
    assert await receive_json(ws) == {"event": "plain"}
    await ws.close()


def _refusals() -> dict[str, tuple[object, int]]:
    message = {"event": "x", "data": "y"}
    return {
        "body not JSON": (b"token=abc", 400),
        "body a JSON list": (b'["token"]', 400),
        "token missing": (b"{}", 400),
        "token not a string": (json.dumps({"token": 5}).encode(), 400),
        "wrong signature": (broadcast_token(message, channel="c", secret="z" * 64), 400),
        "HS256 when HS512 is pinned": (
            broadcast_token(message, channel="c", algorithm="HS256"),
            400,
        ),
        "expired": (broadcast_token(message, channel="c", ttl=-60), 400),
        "no exp": (broadcast_token(message, channel="c", ttl=None), 400),
        "not yet valid": (broadcast_token(message, channel="c", nbf=4_000_000_000), 400),
        "subscribe token": (jwt.encode({"channels": ["c"]}, SECRET, "HS512"), 400),
        "no channel": (broadcast_token(message), 400),
        "channel and channels": (broadcast_token(message, channel="c", channels=["d"]), 400),
        "channel not a string": (
            jwt.encode({"channel": 3, "message": message, "exp": 4e9}, SECRET, "HS512"),
            400,
        ),
        "channels empty": (broadcast_token(message, channels=[]), 400),
        "message not an object": (
            jwt.encode({"channel": "c", "message": "hi", "exp": 4e9}, SECRET, "HS512"),
            400,
        ),
        "message without event": (broadcast_token({"data": 1}, channel="c"), 400),
        "event not a string": (broadcast_token({"event": 1}, channel="c"), 400),
        "message over the size limit": (
            broadcast_token({"event": "big", "data": "x" * 3000}, channel="c"),
            413,
        ),
    }


@pytest.mark.parametrize("case", list(_refusals()))
async def test_refusals_answer_json_error_and_status(server: BifrostServer, case: str):
    """Bad input gets a 4xx with a JSON `error`, never a 5xx."""
    token_or_body, status = _refusals()[case]
    body = (
        token_or_body if isinstance(token_or_body, bytes) else json.dumps({"token": token_or_body})
    )
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post("/broadcast", content=body)
    assert response.status_code == status
    assert isinstance(response.json()["error"], str) and response.json()["error"]


async def test_wrong_signature_says_bad_signature(server: BifrostServer):
    """A token signed with another secret is refused as `Bad signature`, like the original."""
    token = broadcast_token({"event": "x"}, channel="c", secret="q" * 64)
    response = await post_broadcast(server, token)
    assert response.status_code == 400
    assert response.json() == {"error": "Bad signature"}


async def test_body_far_over_the_limit_gets_413_json(server: BifrostServer):
    """A body far over the message limit is refused by size with a JSON error, unread."""
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post("/broadcast", content=b"x" * 200_000)
    assert response.status_code == 413
    assert "error" in response.json()


async def test_deliveries_in_stats_count_frames_handed_to_sockets(server: BifrostServer):
    """`deliveries` in /info.json grows by the number of sockets each broadcast reached."""
    before = server.stats()["deliveries"]
    sockets = [await authenticated(server, ["stats-room"]) for _ in range(2)]
    for n in range(3):
        token = broadcast_token({"event": "n", "data": n}, channel="stats-room")
        assert (await post_broadcast(server, token)).json()["deliveries"] == 2
    for ws in sockets:
        assert [await receive_json(ws) for _ in range(3)] == [
            {"event": "n", "data": n} for n in range(3)
        ]
        await ws.close()
    await asyncio.sleep(0)
    assert server.stats()["deliveries"] == before + 6
