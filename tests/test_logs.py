"""Logs: one line per event worth knowing, plain or JSON, and never a token or a secret."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bifrost.logs import JSONLineFormatter
from tests.clients import authenticated, post_broadcast, receive_json
from tests.live import SECRET, BifrostServer, broadcast_token, free_port, subscribe_token

PREVIOUS_SECRET = "previous-secret-" + "p" * 48
WRONG_SECRET = "wrong-secret-" + "w" * 51
LOG_ENV = {"JWT_SECRET_PREVIOUS": PREVIOUS_SECRET, "BIFROST_AUTH_TIMEOUT": "0.5"}


async def closed(ws) -> tuple[int | None, str | None]:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    return ws.close_code, ws.close_reason


async def exercise(live: BifrostServer) -> list[str]:
    """Good and bad tokens through both endpoints; every token used, for the log scan."""
    now = int(time.time())
    used: list[str] = []

    good = subscribe_token(["secret-room"])
    rotated = subscribe_token(["secret-room"], secret=PREVIOUS_SECRET)
    used += [good, rotated]
    listeners = []
    for token in (good, rotated):
        ws = await connect(live.ws_url)
        await ws.send(json.dumps({"event": "authenticate", "data": token}))
        assert (await receive_json(ws))["event"] == "subscribed"
        listeners.append(ws)

    refused = [
        subscribe_token(["a"], secret=WRONG_SECRET),
        subscribe_token(["a"], exp=now - 60),
        jwt.encode({"channels": ["a"]}, None, "none"),
        jwt.encode({"channels": ["a"]}, SECRET, "HS256"),
        good[:-4] + "AAAA",
        broadcast_token({"event": "x"}, channel="a"),
        "eyJhbGciOiJIUzUxMiJ9.not-json.c2lnbmF0dXJl",
        "not.a-header.at-all",
        jwt.api_jws.encode(b"not json", SECRET, "HS512"),
    ]
    used += refused
    for token in refused:
        async with connect(live.ws_url) as ws:
            await ws.send(json.dumps({"event": "authenticate", "data": token}))
            assert await closed(ws) == (1008, "Not Authorized")

    sent = broadcast_token({"event": "e", "data": "hello"}, channel="secret-room")
    used.append(sent)
    assert (await post_broadcast(live, sent)).json()["deliveries"] == 2
    bad_broadcasts = [
        broadcast_token({"event": "e"}, channel="a", secret=WRONG_SECRET),
        broadcast_token({"event": "e"}, channel="a", ttl=-60),
        good,
        sent[:-4] + "AAAA",
    ]
    used += bad_broadcasts
    for token in bad_broadcasts:
        assert (await post_broadcast(live, token)).status_code == 400
    async with httpx.AsyncClient(base_url=live.url) as http:
        response = await http.post("/broadcast", content=f"token={sent}")
        assert response.status_code == 400
    for ws in listeners:
        await ws.close()
    return used


def assert_no_secret_in(log: str, tokens: list[str]) -> None:
    for secret in (SECRET, PREVIOUS_SECRET, WRONG_SECRET):
        assert secret not in log, "a secret is in the log"
    for token in tokens:
        assert token not in log, f"a token is in the log: {token[:20]}..."
        signature = token.rsplit(".", 1)[-1]
        if len(signature) >= 16:
            assert signature not in log, f"a token's signature is in the log: {token[:20]}..."


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_token_or_secret_ever_reaches_the_log(start_server, log_format):
    """Good and bad tokens through both endpoints, access logs on: no token or secret is logged."""
    env = {**LOG_ENV, "BIFROST_LOG_FORMAT": log_format}
    live = start_server(env, args=("--single-process", "--access-logs"), name=f"logs-{log_format}")
    tokens = await exercise(live)
    live.stop()
    log = live.log()
    assert "authentication failed for 127.0.0.1: Bad signature" in log
    assert "broadcast refused for 127.0.0.1: token has expired" in log
    assert "POST" in log and "/broadcast" in log, "access lines were written"
    assert_no_secret_in(log, tokens)


async def test_json_format_writes_every_line_as_one_json_object(start_server):
    """With BIFROST_LOG_FORMAT=json every line, Sanic's included, is one JSON object."""
    env = {"BIFROST_LOG_FORMAT": "json", "BIFROST_AUTH_TIMEOUT": "0.5"}
    live = start_server(env, args=("--single-process", "--access-logs"), name="logs-json")
    async with connect(live.ws_url) as ws:
        await ws.send(json.dumps({"event": "authenticate", "data": "nonsense"}))
        await closed(ws)
    httpx.get(f"{live.url}/info.json")
    live.stop()
    lines = [json.loads(line) for line in live.log().splitlines()]
    for line in lines:
        assert {"time", "level", "logger", "message", "pid"} <= line.keys()
        assert line["time"].endswith("Z")
    loggers = {line["logger"] for line in lines}
    assert {"bifrost", "bifrost.subscribe", "sanic.root", "sanic.access"} <= loggers
    failure = next(line for line in lines if line["logger"] == "bifrost.subscribe")
    assert failure["level"] == "INFO"
    assert failure["message"].startswith("authentication failed for 127.0.0.1: invalid token")
    accesses = [line for line in lines if line["logger"] == "sanic.access"]
    assert any(a["status"] == 200 and "/info.json" in a["request"] for a in accesses), accesses


async def test_text_format_is_the_default(start_server):
    """Without BIFROST_LOG_FORMAT, the service's lines are plain text naming level and logger."""
    live = start_server({"BIFROST_LOG_FORMAT": None}, name="logs-text")
    live.stop()
    settings_line = next(line for line in live.log().splitlines() if "bifrost settings" in line)
    assert " INFO bifrost: bifrost settings: {" in settings_line
    assert "'log_format': 'text'" in settings_line


async def test_sockets_closed_by_the_server_are_logged_with_their_reason(start_server):
    """Each socket the server closes is logged with its reason, and shutdown with its count."""
    live = start_server({"BIFROST_AUTH_TIMEOUT": "0.5"}, name="logs-closes")
    async with connect(live.ws_url) as silent:
        await closed(silent)
    async with connect(live.ws_url) as binary:
        await binary.send(b"\x00")
        await closed(binary)
    staying = [await authenticated(live, ["stay"]) for _ in range(2)]
    live.stop()
    for ws in staying:
        assert await closed(ws) == (1012, "Service restart")
    log = live.log()
    assert "closing socket: Authentication timeout" in log
    assert "closing socket of 127.0.0.1: Binary frames are not accepted" in log
    stopping = "stopping: closing 2 subscribers (websockets with 1012, event streams ended)"
    assert f" INFO bifrost.subscribe: {stopping}" in log


def test_unknown_log_format_stops_start_up():
    """A BIFROST_LOG_FORMAT other than text or json stops start-up with a line naming it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "BIFROST_"))}
    env = {**base, "JWT_SECRET": SECRET, "BIFROST_LOG_FORMAT": "xml"}
    command = [sys.executable, "-m", "sanic", "bifrost.app", "--port", str(free_port())]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=20)
    assert done.returncode != 0
    refusal = [line for line in done.stderr.splitlines() if "bifrost cannot start" in line]
    assert len(refusal) == 1 and "BIFROST_LOG_FORMAT" in refusal[0] and "json" in refusal[0]


def test_json_line_keeps_a_multi_line_record_on_one_line():
    """A message or traceback with newlines stays one JSON line, extras kept as fields."""
    try:
        raise ValueError("first\nsecond")
    except ValueError:
        record = logging.getLogger("bifrost.test").makeRecord(
            "bifrost.test", logging.ERROR, __file__, 1, "failed:\n%s", ("why",), sys.exc_info(),
            extra={"peer": "10.0.0.1"},
        )  # fmt: skip
    line = JSONLineFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "failed:\nwhy"
    assert parsed["peer"] == "10.0.0.1"
    assert "ValueError: first" in parsed["exception"]


def test_json_line_keeps_text_utf8_cannot_carry():
    """A record holding a lone surrogate is still written, as one JSON line with it escaped."""
    record = logging.makeLogRecord({"msg": "quoted %s", "args": ("cut \ud83d",), "peer": "\udcff"})
    parsed = json.loads(JSONLineFormatter().format(record))
    assert (parsed["message"], parsed["peer"]) == ("quoted cut \ud83d", "\udcff")
