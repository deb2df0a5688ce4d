"""The Python SDK, `bifrost.client`, against a live server: tokens, broadcasts, failures."""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest

from bifrost.client import BifrostClient, BifrostError, BroadcastAnswer, Position, token_for
from tests.clients import authenticated, receive_json
from tests.live import SECRET, BifrostServer, free_port, subscribe_token

HISTORY = {"BIFROST_HISTORY_SIZE": "100"}


def test_token_for_signs_channels_hs512_without_expiry():
    """A subscribe token lists the channels, is signed HS512 and, without a ttl, has no exp."""
    token = token_for(["user:1", "global"], secret=SECRET)
    assert jwt.get_unverified_header(token)["alg"] == "HS512"
    assert jwt.decode(token, SECRET, ["HS512"]) == {"channels": ["user:1", "global"]}


def test_token_for_takes_ttl_one_channel_and_the_environment(monkeypatch):
    """A ttl sets exp that many seconds ahead, a lone name is one channel, JWT_SECRET signs."""
    monkeypatch.setenv("JWT_SECRET", SECRET)
    claims = jwt.decode(token_for("user:1", ttl=300), SECRET, ["HS512"])
    assert claims["channels"] == ["user:1"]
    assert abs(claims["exp"] - (time.time() + 300)) <= 2


def test_missing_configuration_names_the_variable(monkeypatch):
    """Without JWT_SECRET or BIFROST_URL, the SDK says which variable to set."""
    monkeypatch.delenv("JWT_SECRET", raising=False)
    monkeypatch.delenv("BIFROST_URL", raising=False)
    with pytest.raises(ValueError, match="JWT_SECRET"):
        token_for(["a"])
    with pytest.raises(ValueError, match="BIFROST_URL"):
        BifrostClient(secret=SECRET)
    with pytest.raises(ValueError, match="JWT_SECRET"):
        BifrostClient("http://127.0.0.1:8000")


def test_broadcast_tokens_match_the_ruby_gem():
    """A broadcast token is HS512 with a message of event and data, expiring after 60 s."""
    client = BifrostClient("http://127.0.0.1:8000", SECRET)
    token = client.broadcast_token("user:1", "new_item", '{"id": 1}')
    assert jwt.get_unverified_header(token)["alg"] == "HS512"
    claims = jwt.decode(token, SECRET, ["HS512"])
    assert claims["channel"] == "user:1"
    assert claims["message"] == {"event": "new_item", "data": '{"id": 1}'}
    assert abs(claims["exp"] - (time.time() + 60)) <= 2


async def test_token_for_subscribes_on_a_live_server(server: BifrostServer):
    """A token from token_for authenticates a socket for each of its channels."""
    from websockets.asyncio.client import connect

    async with connect(server.ws_url) as ws:
        token = token_for(["sdk:a", "sdk:b"], ttl=60, secret=SECRET)
        await ws.send(json.dumps({"event": "authenticate", "data": token}))
        channels = [json.loads((await receive_json(ws))["data"])["channel"] for _ in range(2)]
    assert channels == ["sdk:a", "sdk:b"]


async def test_sync_broadcast_delivers_and_answers_deliveries(server: BifrostServer):
    """`broadcast` hands the message to the subscriber and answers the server's JSON."""
    ws = await authenticated(server, ["sdk:sync"])
    async with ws:
        client = BifrostClient(server.url, SECRET)
        answer = await asyncio.to_thread(client.broadcast, "sdk:sync", "new_item", '{"id": 7}')
        assert answer == {"message": "Success", "deliveries": 1}
        assert answer.deliveries == 1 and answer.positions is None
        assert await receive_json(ws) == {"event": "new_item", "data": '{"id": 7}'}


async def test_async_broadcast_to_several_channels_delivers_once(server: BifrostServer):
    """`broadcast_async` to a list of channels reaches a socket hearing two of them once."""
    ws = await authenticated(server, ["sdk:x", "sdk:y"])
    async with ws:
        client = BifrostClient(server.url, SECRET)
        answer = await client.broadcast_async(["sdk:x", "sdk:y", "sdk:z"], "tick", {"n": 1})
        assert answer["deliveries"] == 1
        assert await receive_json(ws) == {"event": "tick", "data": {"n": 1}}
        with pytest.raises(TimeoutError):
            await receive_json(ws, timeout=0.3)


async def test_client_reads_url_and_secret_from_the_environment(server: BifrostServer, monkeypatch):
    """Built with no arguments, the client broadcasts to BIFROST_URL signed with JWT_SECRET."""
    monkeypatch.setenv("BIFROST_URL", server.url + "/")
    monkeypatch.setenv("JWT_SECRET", SECRET)
    answer = await BifrostClient().broadcast_async("sdk:nobody", "tick")
    assert answer == {"message": "Success", "deliveries": 0}


async def test_refusal_raises_with_status_and_server_reason(server: BifrostServer):
    """A refused broadcast raises BifrostError carrying the status and the server's error text."""
    client = BifrostClient(server.url, "another-secret-" + "y" * 50)
    with pytest.raises(BifrostError) as refused:
        await asyncio.to_thread(client.broadcast, "sdk:a", "tick")
    assert (refused.value.status, refused.value.error) == (400, "Bad signature")
    with pytest.raises(BifrostError) as refused_async:
        await client.broadcast_async("sdk:a", "tick")
    assert (refused_async.value.status, refused_async.value.error) == (400, "Bad signature")
    assert "400" in str(refused_async.value) and "Bad signature" in str(refused_async.value)


async def test_any_status_above_206_raises(server: BifrostServer):
    """A 413 for a large message and a 404 for a wrong URL both raise with their status."""
    client = BifrostClient(server.url, SECRET)
    with pytest.raises(BifrostError) as too_large:
        await client.broadcast_async("sdk:a", "big", "x" * 5000)
    assert too_large.value.status == 413 and "over the limit" in too_large.value.error
    with pytest.raises(BifrostError) as not_found:
        await BifrostClient(server.url + "/nowhere", SECRET).broadcast_async("sdk:a", "tick")
    assert not_found.value.status == 404 and not_found.value.error


async def test_network_failure_raises_without_status():
    """No server at the URL raises BifrostError with no status and the failure's text."""
    client = BifrostClient(f"http://127.0.0.1:{free_port()}", SECRET, timeout=2)
    with pytest.raises(BifrostError) as failed:
        await asyncio.to_thread(client.broadcast, "sdk:a", "tick")
    assert failed.value.status is None and "could not be reached" in str(failed.value)
    with pytest.raises(BifrostError) as failed_async:
        await client.broadcast_async("sdk:a", "tick")
    assert failed_async.value.status is None


async def test_broadcast_answers_the_positions_a_subscriber_sees(start_server):
    """With history on, the answer gives the message's position in each channel, the same
    that a positioned subscriber's frame carries, one offset past its subscribed position."""
    from websockets.asyncio.client import connect

    live: BifrostServer = start_server(HISTORY, name="sdk-history")
    client = BifrostClient(live.url, SECRET)
    async with connect(live.ws_url) as ws:
        token = subscribe_token(["sdk:a", "sdk:b"])
        await ws.send(json.dumps({"event": "authenticate", "data": token, "since": {}}))
        starts = {}
        for _ in range(2):
            subscribed = await receive_json(ws)
            assert subscribed["event"] == "subscribed"
            starts.update(subscribed["positions"])
        both = await client.broadcast_async(["sdk:a", "sdk:b"], "tick", "1")
        one = await asyncio.to_thread(client.broadcast, "sdk:a", "tock", "2")
        frames = [await receive_json(ws), await receive_json(ws)]
    assert isinstance(both, BroadcastAnswer) and both.deliveries == 1
    assert both.positions == {
        channel: Position(start["epoch"], start["offset"] + 1) for channel, start in starts.items()
    }
    assert one.positions == {"sdk:a": Position(starts["sdk:a"]["epoch"], 2)}
    assert frames == [
        {"event": "tick", "data": "1", "positions": wire(both.positions)},
        {"event": "tock", "data": "2", "positions": wire(one.positions)},
    ]


def test_an_answer_without_positions_has_none_and_a_malformed_one_raises():
    """History off answers no positions (None); positions that are not positions raise
    ValueError when read, since the broadcast itself went through."""
    assert BroadcastAnswer({"message": "Success", "deliveries": 0}).positions is None
    wrong = BroadcastAnswer({"deliveries": 1, "positions": {"a": {"epoch": "e", "offset": -1}}})
    with pytest.raises(ValueError, match="offset"):
        _ = wrong.positions


def wire(positions: dict[str, Position] | None) -> dict[str, dict[str, object]]:
    """Positions as the frames carry them."""
    assert positions is not None
    return {c: {"epoch": p.epoch, "offset": p.offset} for c, p in positions.items()}
