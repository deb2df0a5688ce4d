"""Start-up: a wrong setting stops the service with one line; development mode just works."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect

from tests.live import SECRET, BifrostServer, free_port


def run_until_exit(env: dict[str, str], *args: str, timeout: float = 20) -> tuple[int, str]:
    """Run `sanic bifrost.app` expecting it to refuse to start; its exit code and output."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "BIFROST_"))}
    command = [sys.executable, "-m", "sanic", "bifrost.app", "--port", str(free_port()), *args]
    done = subprocess.run(
        command, env={**base, **env}, capture_output=True, text=True, timeout=timeout
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "JWT_SECRET"),
        ({"JWT_SECRET": "too-short"}, "JWT_SECRET"),
        ({"JWT_SECRET": SECRET, "BIFROST_PING_INTERVAL": "soon"}, "BIFROST_PING_INTERVAL"),
        ({"JWT_SECRET": SECRET, "BIFROST_AUTH_TIMEOUT": "-1"}, "BIFROST_AUTH_TIMEOUT"),
        ({"JWT_SECRET": SECRET, "BIFROST_JWT_ALGORITHMS": "none"}, "BIFROST_JWT_ALGORITHMS"),
        ({"JWT_SECRET": SECRET, "BIFROST_JWT_ALGORITHMS": "RS256"}, "BIFROST_JWT_ALGORITHMS"),
        ({"JWT_SECRET": SECRET, "BIFROST_REQUIRE_EXP": "maybe"}, "BIFROST_REQUIRE_EXP"),
        ({"JWT_SECRET": SECRET, "BIFROST_MAX_CHANNELS": "1.5"}, "BIFROST_MAX_CHANNELS"),
        ({"JWT_SECRET": SECRET, "BIFROST_REDIS_URL": "http://x:6379"}, "BIFROST_REDIS_URL"),
    ],
)
def test_wrong_setting_stops_start_up_naming_it(env, variable):
    """A missing secret or a malformed setting stops start-up with a line naming the variable."""
    code, output = run_until_exit(env)
    assert code != 0
    refusal = [line for line in output.splitlines() if "bifrost cannot start" in line]
    assert len(refusal) == 1, output
    assert variable in refusal[0]
    assert "set" in refusal[0]


def test_several_workers_without_redis_are_refused():
    """More than one worker without BIFROST_REDIS_URL is refused with a line saying to set it."""
    code, output = run_until_exit({"JWT_SECRET": SECRET}, "--workers", "2")
    assert code != 0
    assert "BIFROST_REDIS_URL" in next(
        line for line in output.splitlines() if "bifrost cannot start" in line
    )


def test_short_secret_starts_with_warning(start_server):
    """A secret of 32 to 63 characters starts, with a warning recommending 64."""
    live = start_server({"JWT_SECRET": "k" * 40})
    assert "64 or more are recommended" in live.log()


def test_settings_are_read_from_dotenv(start_server, tmp_path, monkeypatch):
    """Settings come from a `.env` file in the working folder too."""
    (tmp_path / ".env").write_text(f"JWT_SECRET={'e' * 64}\nBIFROST_MAX_CHANNELS=7\n")
    monkeypatch.chdir(tmp_path)
    live = start_server({"JWT_SECRET": None})
    assert "'max_channels': 7" in live.log()


def rsa_public_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


@pytest.mark.parametrize("secret", [None, "k" * 40], ids=["no secret", "unused secret"])
def test_public_key_only_says_nothing_of_the_secret_length(start_server, secret):
    """With only public-key algorithms accepted, no warning speaks of a JWT_SECRET's length,
    whether there is none or one the server does not use."""
    env = {"JWT_SECRET": secret, "BIFROST_JWT_PUBLIC_KEY": rsa_public_pem()}
    live = start_server({**env, "BIFROST_JWT_ALGORITHMS": "RS256"})
    assert "bifrost settings:" in live.log()
    assert "recommended" not in live.log()
    assert "JWT_SECRET has" not in live.log()


@pytest.mark.parametrize(
    "algorithms",
    [{}, {"BIFROST_JWT_ALGORITHMS": "RS256,HS512", "BIFROST_JWT_PUBLIC_KEY": rsa_public_pem()}],
    ids=["default", "public-key-first"],
)
async def test_development_mode_logs_a_token_and_a_working_curl(log_dir, algorithms):
    """`--dev` with no secret logs a subscribe token and a curl command that reaches it, signed
    with an HMAC algorithm the server accepts even when a public-key one is listed first."""
    unset = {k: None for k in os.environ if k.startswith(("JWT_", "BIFROST_"))}
    env = {**unset, "JWT_SECRET": None, **algorithms}
    live = BifrostServer(log_dir, env, args=("--dev",), name="dev")
    live.start()
    try:
        log = live.log()
        assert "throwaway secret" in log
        auth = re.search(r"then send: (\{.*\})", log).group(1)
        curl = re.search(r"(curl -s -X POST \S+/broadcast -d '.*')", log).group(1)
        async with connect(live.ws_url) as ws:
            await ws.send(auth)
            assert json.loads(await ws.recv())["event"] == "subscribed"
            parts = shlex.split(curl)
            url, body = parts[parts.index("-X") + 2], parts[parts.index("-d") + 1]
            response = httpx.post(url.replace("8000", str(live.port)), content=body)
            assert response.json() == {"message": "Success", "deliveries": 1}
            assert json.loads(await ws.recv())["event"] == "hello"
    finally:
        live.stop()


async def test_development_banner_names_the_status_page_and_the_playground(log_dir):
    """The development banner gives the URLs of the status page and the playground, and both
    answer with their pages."""
    unset = {k: None for k in os.environ if k.startswith(("JWT_", "BIFROST_"))}
    live = BifrostServer(log_dir, {**unset, "JWT_SECRET": None}, args=("--dev",), name="dev")
    live.start()
    try:
        found = re.search(r"Status page: (\S+)/ +Playground: (\S+/test)\b", live.log())
        assert found, live.log()
        status_page, playground = found.groups()
        here = f"127.0.0.1:{live.port}"
        for url in (status_page + "/", playground):
            response = httpx.get(url.replace("127.0.0.1:8000", here))
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/html")
    finally:
        live.stop()
