"""The `bifrost` command, run as a user runs it: the installed script, against live servers."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

import httpx
import jwt
import pytest
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.sync.client import ClientConnection, connect

from bifrost.client.cli import CLOSE_TIMEOUT
from tests.delay_proxy import DelayProxy
from tests.live import SECRET, BifrostServer, free_port, subscribe_token
from tests.redis_server import RedisServer

BIFROST = Path(sys.executable).with_name("bifrost")
RUN_TIMEOUT = 20.0
SERVE_TIMEOUT = 20.0
# listen's backoff after a close is 0.5, 1, 2, then 5 s; a restart takes a few seconds.
RESUME_TIMEOUT = 30.0
HISTORY = {"BIFROST_HISTORY_SIZE": "100"}


@pytest.fixture(scope="module", autouse=True)
def installed_script() -> None:
    """The tests run the console script that `pip install -e .` puts beside the interpreter."""
    if not BIFROST.exists():
        pytest.fail(f"{BIFROST} is missing: run pip install -e '.[test]' again")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working folder, so that no .env of the checkout is read."""
    return tmp_path


def environ(**variables: str) -> dict[str, str]:
    """The test's environment without Bifröst's variables, plus `variables`."""
    read = {"JWT_SECRET", "BIFROST_URL", "HOST", "PORT", "BIFROST_WORKERS"}
    base = {k: v for k, v in os.environ.items() if k not in read}
    return {**base, **variables}


def bifrost(
    *args: str, env: Mapping[str, str], cwd: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `bifrost ARGS` to completion and capture what it says."""
    return subprocess.run(
        [str(BIFROST), *args],
        env=dict(env),
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


@pytest.fixture
def subscriber(server: BifrostServer) -> Iterator[ClientConnection]:
    """A socket subscribed to `cli:room`."""
    with connect(server.ws_url) as ws:
        ws.send(json.dumps({"event": "authenticate", "data": subscribe_token(["cli:room"])}))
        assert json.loads(ws.recv(5))["event"] == "subscribed"
        yield ws


def test_help_names_every_command(workdir: Path):
    """`bifrost --help` and each command's --help exit 0 and describe the commands."""
    main = bifrost("--help", env=environ(), cwd=workdir)
    assert main.returncode == 0
    for command in ("token", "broadcast", "listen", "serve"):
        assert command in main.stdout
        sub = bifrost(command, "--help", env=environ(), cwd=workdir)
        assert sub.returncode == 0 and f"bifrost {command}" in sub.stdout


def test_no_command_is_a_usage_error(workdir: Path):
    """Without a command, or with an unknown one, bifrost exits 2 with usage on stderr."""
    for args in ((), ("fly",)):
        result = bifrost(*args, env=environ(), cwd=workdir)
        assert result.returncode == 2
        assert "usage: bifrost" in result.stderr and not result.stdout


def test_token_prints_a_subscribe_token(workdir: Path):
    """`bifrost token A B` prints only an HS512 token granting channels A and B."""
    result = bifrost("token", "user:1", "global", env=environ(JWT_SECRET=SECRET), cwd=workdir)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    assert jwt.get_unverified_header(token)["alg"] == "HS512"
    assert jwt.decode(token, SECRET, ["HS512"]) == {"channels": ["user:1", "global"]}


def test_token_without_secret_says_what_to_set(workdir: Path):
    """Without JWT_SECRET, bifrost token exits 2 and names the variable on stderr."""
    result = bifrost("token", "user:1", env=environ(), cwd=workdir)
    assert result.returncode == 2
    assert "JWT_SECRET" in result.stderr and not result.stdout


def test_channel_names_the_server_refuses_are_usage_errors(workdir: Path):
    """A channel name the server would refuse exits 2 naming the rule, with nothing signed."""
    env = environ(JWT_SECRET=SECRET, BIFROST_URL="http://127.0.0.1:1")
    for args in (("token", "ok", ""), ("broadcast", "x" * 256, "e"), ("listen", "")):
        result = bifrost(*args, env=env, cwd=workdir)
        assert result.returncode == 2, result
        assert "channel must be a string of 1 to 255 characters" in result.stderr
        assert not result.stdout


def test_broadcast_prints_deliveries(server: BifrostServer, subscriber: ClientConnection, workdir):
    """`bifrost broadcast CHANNEL EVENT DATA` delivers DATA as sent and prints the deliveries."""
    env = environ(JWT_SECRET=SECRET, BIFROST_URL=server.url)
    result = bifrost("broadcast", "cli:room", "new_item", '{"id": 42}', env=env, cwd=workdir)
    assert (result.returncode, result.stdout) == (0, "1\n"), result.stderr
    assert json.loads(subscriber.recv(5)) == {"event": "new_item", "data": '{"id": 42}'}


def test_broadcast_reads_data_from_stdin(
    server: BifrostServer, subscriber: ClientConnection, workdir
):
    """DATA `-` is read from standard input, and --url names the server."""
    env = environ(JWT_SECRET=SECRET)
    result = bifrost(
        "broadcast", "cli:room", "note", "-", "--url", server.url, env=env, cwd=workdir, stdin="hi"
    )
    assert (result.returncode, result.stdout) == (0, "1\n"), result.stderr
    assert json.loads(subscriber.recv(5)) == {"event": "note", "data": "hi"}


def test_broadcast_refused_exits_1_with_the_reason(server: BifrostServer, workdir: Path):
    """A broadcast the server refuses exits 1 with its status and error on stderr."""
    env = environ(JWT_SECRET="another-secret-" + "y" * 50, BIFROST_URL=server.url)
    result = bifrost("broadcast", "cli:room", "tick", env=env, cwd=workdir)
    assert result.returncode == 1 and not result.stdout
    assert "400" in result.stderr and "Bad signature" in result.stderr


def test_broadcast_unreachable_exits_1(workdir: Path):
    """A server that cannot be reached makes broadcast exit 1 saying so."""
    env = environ(JWT_SECRET=SECRET, BIFROST_URL=f"http://127.0.0.1:{free_port()}")
    result = bifrost("broadcast", "cli:room", "tick", env=env, cwd=workdir)
    assert result.returncode == 1 and "could not be reached" in result.stderr


def test_listen_prints_events_as_they_arrive(server: BifrostServer, workdir: Path):
    """`bifrost listen` prints each event as one JSON line the moment it arrives."""
    env = environ(JWT_SECRET=SECRET, BIFROST_URL=server.url)
    with _listening(env, workdir, "cli:listen", "--count", "2") as listener:
        _wait_for_line(listener.stderr, "subscribed to cli:listen")
        _send(server, "cli:listen", "first", "1")
        assert json.loads(_wait_for_line(listener.stdout, "first")) == {
            "event": "first",
            "data": "1",
        }
        _send(server, "cli:listen", "second", {"n": 2})
        assert json.loads(_wait_for_line(listener.stdout, "second"))["data"] == {"n": 2}
        assert listener.process.wait(RUN_TIMEOUT) == 0


def test_listen_with_a_refused_token_exits_1(server: BifrostServer, workdir: Path):
    """A token the server refuses closes the socket 1008, and listen exits 1 saying why."""
    env = environ(JWT_SECRET="another-secret-" + "y" * 50, BIFROST_URL=server.url)
    result = bifrost("listen", "cli:room", env=env, cwd=workdir)
    assert result.returncode == 1
    assert "1008" in result.stderr and "Not Authorized" in result.stderr


def test_listen_unreachable_exits_1(workdir: Path):
    """A server that cannot be reached makes listen exit 1 at once."""
    env = environ(JWT_SECRET=SECRET, BIFROST_URL=f"http://127.0.0.1:{free_port()}")
    result = bifrost("listen", "cli:room", env=env, cwd=workdir)
    assert result.returncode == 1 and "cannot connect" in result.stderr


def test_listen_reconnects_after_a_normal_close(start_server, workdir: Path):
    """A socket closed 1001 (idle timeout) makes listen say so and reconnect, not crash."""
    # The proxy holds back all the client sends (its token, its pongs) past the idle timeout.
    quick_idle = {"BIFROST_PING_INTERVAL": "0.5", "BIFROST_IDLE_TIMEOUT": "1.5"}
    live = start_server({**quick_idle, "BIFROST_AUTH_TIMEOUT": "10"})
    proxy = DelayProxy(live.port, delay=4.0).start()
    try:
        env = environ(JWT_SECRET=SECRET, BIFROST_URL=f"http://127.0.0.1:{proxy.port}")
        with _listening(env, workdir, "cli:idle") as listener:
            said = _wait_for_line(listener.stderr, "connection closed", timeout=30)
            assert said.strip() == "connection closed (1001 Idle timeout), reconnecting"
            assert listener.process.poll() is None
    finally:
        proxy.stop()


def test_listen_resumes_after_a_restart_without_loss(
    redis_server: RedisServer, start_server, workdir: Path
):
    """With history in Redis, listen reconnects after its node restarts (1012) and prints the
    events broadcast meanwhile through another node, then the live ones: all, once, in order."""
    env = {"BIFROST_REDIS_URL": redis_server.url, **HISTORY}
    node: BifrostServer = start_server(env, name="listen-node")
    other: BifrostServer = start_server(env, name="listen-other")
    cli_env = environ(JWT_SECRET=SECRET, BIFROST_URL=node.url)
    with _listening(cli_env, workdir, "cli:resume", "--count", "9") as listener:
        _wait_for_line(listener.stderr, "subscribed to cli:resume")
        for n in (1, 2, 3):
            _send(node, "cli:resume", "tick", str(n))
        printed = _next_lines(listener.stdout, 3)
        node.stop()
        _wait_for_line(listener.stderr, "connection closed (1012")
        for n in (4, 5, 6):
            _send(other, "cli:resume", "tick", str(n), deliveries=0)
        node.start()
        _wait_for_line(listener.stderr, "subscribed to cli:resume", timeout=RESUME_TIMEOUT)
        for n in (7, 8, 9):
            _send(node, "cli:resume", "tick", str(n))
        assert listener.process.wait(RUN_TIMEOUT) == 0
        printed += _next_lines(listener.stdout, 6)
        time.sleep(0.1)
        assert listener.stdout.empty()
        assert not any("could not recover" in line for line in listener.stderr.queue)
    assert [json.loads(line) for line in printed] == [
        {"event": "tick", "data": str(n)} for n in range(1, 10)
    ]


def test_listen_names_a_channel_it_could_not_recover(start_server, workdir: Path):
    """A server keeping history in-process starts its streams afresh when restarted: listen
    says on standard error which channel it could not recover, and hears on."""
    live: BifrostServer = start_server(HISTORY, name="listen-afresh")
    env = environ(JWT_SECRET=SECRET, BIFROST_URL=live.url)
    with _listening(env, workdir, "cli:afresh", "--count", "2") as listener:
        _wait_for_line(listener.stderr, "subscribed to cli:afresh")
        _send(live, "cli:afresh", "tick", "1")
        _next_lines(listener.stdout, 1)
        live.stop()
        live.start()
        said = _wait_for_line(listener.stderr, "could not recover", timeout=RESUME_TIMEOUT)
        assert said.strip() == (
            "could not recover cli:afresh: events sent while disconnected may be missing"
        )
        _send(live, "cli:afresh", "tick", "2")
        assert json.loads(_next_lines(listener.stdout, 1)[0]) == {"event": "tick", "data": "2"}
        assert listener.process.wait(RUN_TIMEOUT) == 0


def test_listen_interrupted_exits_130(server: BifrostServer, workdir: Path):
    """Ctrl-C (SIGINT) stops listen with exit code 130 and no traceback."""
    env = environ(JWT_SECRET=SECRET, BIFROST_URL=server.url)
    with _listening(env, workdir, "cli:quiet") as listener:
        _wait_for_line(listener.stderr, "subscribed to cli:quiet")
        listener.process.send_signal(signal.SIGINT)
        assert listener.process.wait(RUN_TIMEOUT) == 130
        time.sleep(0.1)
        assert "Traceback" not in "".join(listener.stderr.queue)


def test_listen_interrupted_exits_130_when_the_server_never_answers_its_close(workdir: Path):
    """Ctrl-C leaves within the close timeout even when the server has stopped answering."""
    with _mute_server() as port:
        env = environ(JWT_SECRET=SECRET, BIFROST_URL=f"http://127.0.0.1:{port}")
        with _listening(env, workdir, "cli:mute") as listener:
            _wait_for_line(listener.stderr, "subscribed to cli:mute")
            interrupted = time.monotonic()
            listener.process.send_signal(signal.SIGINT)
            assert listener.process.wait(RUN_TIMEOUT) == 130
            assert time.monotonic() - interrupted < 2 * CLOSE_TIMEOUT + 1


@contextmanager
def _mute_server() -> Iterator[int]:
    """A websocket server that answers the handshake and says `subscribed` to cli:mute, then
    reads on and answers nothing (a server hung, or a network gone silent)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        peer, _ = listener.accept()
        with peer:
            server = ServerProtocol()
            while not (events := server.events_received()):
                server.receive_data(peer.recv(65536))
            assert isinstance(events[0], Request)
            server.send_response(server.accept(events[0]))
            channel = json.dumps({"channel": "cli:mute"})
            server.send_text(json.dumps({"event": "subscribed", "data": channel}).encode())
            peer.sendall(b"".join(server.data_to_send()))
            with suppress(OSError):
                while peer.recv(65536):
                    pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_serve_runs_the_service(workdir: Path):
    """`bifrost serve --port P` answers on P with the status page, and SIGTERM stops it cleanly."""
    port = free_port()
    with _serving(environ(JWT_SECRET=SECRET), workdir, "--port", str(port)) as base:
        assert httpx.get(f"{base}/info.json").json()["stats"]["connected"] == 0
        assert "Bifröst" in httpx.get(f"{base}/").text
        assert httpx.get(f"{base}/test").status_code == 404


def test_serve_reads_the_start_options_of_python_m_bifrost(workdir: Path):
    """`bifrost serve` refuses a wrong PORT or BIFROST_WORKERS as `python -m bifrost` does."""
    for variable, raw in (("BIFROST_WORKERS", "two"), ("PORT", "70000")):
        env = environ(**{"JWT_SECRET": SECRET, "PORT": str(free_port()), variable: raw})
        result = bifrost("serve", "--single-process", env=env, cwd=workdir)
        assert result.returncode == 2, result
        assert f"bifrost serve: {variable}='{raw}' is not a" in result.stderr
    wrong = bifrost("serve", "--port", "0", env=environ(), cwd=workdir)
    assert wrong.returncode == 2 and "'0' is not a port number" in wrong.stderr


def test_serve_listens_where_port_says(workdir: Path):
    """Without --port, `bifrost serve` listens on PORT, as platforms set it."""
    port = free_port()
    with _serving(environ(JWT_SECRET=SECRET, PORT=str(port)), workdir, port=port) as base:
        assert httpx.get(f"{base}/info.json").json()["stats"]["connected"] == 0


def test_serve_dev_opens_the_playground(workdir: Path):
    """`bifrost serve --dev` runs in development mode, where /test is the playground."""
    port = free_port()
    with _serving(environ(), workdir, "--port", str(port), "--dev") as base:
        page = httpx.get(f"{base}/test")
        assert page.status_code == 200 and "playground" in page.text


# Starts the command with Ctrl-C's default disposition, as a terminal does: a process started
# in the background of a script inherits SIGINT ignored, and so would the command.
AS_FROM_A_TERMINAL = (
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
)


class _listening:
    """`bifrost listen ARGS` in the background, its lines collected as they come."""

    def __init__(self, env: Mapping[str, str], cwd: Path, *args: str) -> None:
        self.process = subprocess.Popen(
            [*AS_FROM_A_TERMINAL, str(BIFROST), "listen", *args],
            env=dict(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout = self._collect(self.process.stdout)
        self.stderr = self._collect(self.process.stderr)

    @staticmethod
    def _collect(stream: IO[str] | None) -> queue.Queue[str]:
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            assert stream is not None
            for line in stream:
                lines.put(line)

        threading.Thread(target=read, daemon=True).start()
        return lines

    def __enter__(self) -> _listening:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class _serving:
    """`bifrost serve ARGS` until it answers; on leaving, SIGTERM and expect exit 0."""

    def __init__(
        self, env: Mapping[str, str], cwd: Path, *args: str, port: int | None = None
    ) -> None:
        self.log = cwd / "serve.log"
        self.args = args
        self.env = dict(env)
        self.cwd = cwd
        self.port = port if port is not None else args[args.index("--port") + 1]

    def __enter__(self) -> str:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(BIFROST), "serve", *self.args],
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + SERVE_TIMEOUT
        while True:
            assert self.process.poll() is None, f"serve exited:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, f"serve did not answer:\n{self.log.read_text()}"
            try:
                httpx.get(f"{base}/info.json", timeout=0.5)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        # Sanic's main process can miss a signal in its first moments (see tests/live.py).
        time.sleep(0.5)
        return base

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(SERVE_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise
        if exc == (None, None, None):
            assert code == 0, f"serve exited {code}:\n{self.log.read_text()}"
            assert "Traceback" not in self.log.read_text()


def _wait_for_line(lines: queue.Queue[str], text: str, timeout: float = 10.0) -> str:
    """The next line containing `text`, arrived within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    seen = []
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"no line with {text!r} within {timeout:g} s; saw {seen!r}")


def _next_lines(lines: queue.Queue[str], count: int, timeout: float = 10.0) -> list[str]:
    """The next `count` lines, all arrived within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    taken: list[str] = []
    while len(taken) < count:
        try:
            taken.append(lines.get(timeout=max(deadline - time.monotonic(), 0)))
        except queue.Empty:
            raise AssertionError(
                f"{len(taken)} lines, not {count}, within {timeout:g} s: {taken!r}"
            ) from None
    return taken


def _send(
    server: BifrostServer, channel: str, event: str, data: object, deliveries: int = 1
) -> None:
    from bifrost.client import BifrostClient

    answer = BifrostClient(server.url, SECRET).broadcast(channel, event, data)
    assert answer["deliveries"] == deliveries
