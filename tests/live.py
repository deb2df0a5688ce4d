"""Real Bifröst servers for the tests: separate processes on free loopback ports."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import jwt

__all__ = [
    "SECRET",
    "BifrostServer",
    "broadcast_token",
    "free_port",
    "subscribe_token",
]

SECRET = "test-secret-" + "x" * 52
STARTUP_TIMEOUT = 20.0
MAIN_PROCESS_SETTLE = 0.5
EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")
FIRST_TEST_PORT = 20_000


def free_port() -> int:
    """A loopback port nobody listens on right now, below the kernel's range of ephemeral ports:
    there, no client socket opened meanwhile (by the tests or anything else on the machine) can
    take it before the server binds it."""
    lowest_ephemeral = int(EPHEMERAL_PORTS.read_text().split()[0])
    while True:
        port = random.randrange(FIRST_TEST_PORT, lowest_ephemeral)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def subscribe_token(channels: Sequence[str], secret: str = SECRET, **claims: Any) -> str:
    """A subscribe token as an application mints it."""
    return jwt.encode({"channels": list(channels), **claims}, secret, "HS512")


def broadcast_token(
    message: Mapping[str, Any],
    *,
    channel: str | None = None,
    channels: Sequence[str] | None = None,
    secret: str = SECRET,
    algorithm: str = "HS512",
    ttl: float | None = 60,
    **claims: Any,
) -> str:
    """A broadcast token as an application mints it."""
    payload: dict[str, Any] = {"message": dict(message), **claims}
    if channel is not None:
        payload["channel"] = channel
    if channels is not None:
        payload["channels"] = list(channels)
    if ttl is not None:
        payload["exp"] = int(time.time() + ttl)
    return jwt.encode(payload, secret, algorithm)


def processes_in_group(pgid: int) -> list[int]:
    """Pids of the running (not zombie) processes of a process group, read from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        # The fields after the command name, which is in parentheses and may hold spaces.
        fields = _read_proc(int(entry), "stat").rpartition(b")")[2].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            found.append(int(entry))
    return found


def _read_proc(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:  # gone meanwhile, or not ours to read
        return b""


class BifrostServer:
    """One Bifröst process started with `sanic bifrost.app`, its output kept in a log file.

    `env` adds to the test's environment and a test secret; a variable set to None is removed.
    `entry_point=True` starts `python -m bifrost` instead, on HOST and PORT, `args` unused.
    """

    def __init__(
        self,
        log_dir: Path,
        env: Mapping[str, str | None] | None = None,
        *,
        args: Sequence[str] = ("--single-process",),
        name: str = "bifrost",
        entry_point: bool = False,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/subscribe"
        self.log_path = log_dir / f"{name}-{self.port}.log"
        listen = {"HOST": "127.0.0.1", "PORT": str(self.port)} if entry_point else {}
        merged = {**os.environ, "JWT_SECRET": SECRET, **listen, **(env or {})}
        self._env = {name: value for name, value in merged.items() if value is not None}
        if entry_point:
            self._command = [sys.executable, "-m", "bifrost"]
            self._single_process = int(self._env.get("BIFROST_WORKERS") or 1) == 1
        else:
            self._command = [sys.executable, "-m", "sanic", "bifrost.app"]
            self._command += ["--host", "127.0.0.1", "--port", str(self.port), *args]
            self._single_process = "--single-process" in args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> BifrostServer:
        """Start the process, in a process group of its own, and wait until it answers HTTP."""
        command = self._command
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited at start-up:\n{self.log()}")
            try:
                httpx.get(f"{self.url}/healthz", timeout=0.5)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            if not self._single_process:
                # Sanic's main process loses a signal in its first moments after the workers
                # are ready (it stops the workers but never exits): let it settle.
                time.sleep(MAIN_PROCESS_SETTLE)
            return self
        self.stop()
        raise RuntimeError(f"server did not answer within {STARTUP_TIMEOUT} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the process and wait for it to exit; return its exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def group_processes(self) -> list[int]:
        """The processes still running in the server's process group (its pid is the group's)."""
        assert self.process is not None
        return processes_in_group(self.process.pid)

    def workers(self) -> list[int]:
        """The pids of the main process's Sanic workers, named in their environment."""
        return [
            pid
            for pid in self.group_processes()
            if b"SANIC_WORKER_NAME=Sanic-Server-" in _read_proc(pid, "environ")
        ]

    def log(self) -> str:
        """Everything the process has written."""
        return self.log_path.read_text(errors="replace")

    def stats(self) -> dict[str, int]:
        """The `stats` object of `/info.json`."""
        stats: dict[str, int] = httpx.get(f"{self.url}/info.json").json()["stats"]
        return stats

    def assert_log_clean(self) -> None:
        """No unhandled exception reached the log."""
        log = self.log()
        markers = (
            "Traceback",
            "Exception occurred",
            "Unexpected exception",
            "exception was never retrieved",
            "broker call failed",
        )
        for marker in markers:
            assert marker not in log, f"{marker!r} in the server log:\n{log}"
