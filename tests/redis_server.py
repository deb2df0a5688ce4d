"""A redis-server of the tests' own on a free loopback port, that can be stopped and restarted.

Without Debian's `redis-server` the tests that need one are skipped with a reason that says how
to install it; under CI (`CI` set) they fail instead, as the browser tests do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.live import free_port

__all__ = ["RedisServer", "require_redis_server"]

STARTUP_TIMEOUT = 10.0


def require_redis_server() -> str:
    """The path of `redis-server`; skip the test without one, or fail under CI."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if Path(binary).exists():
        return binary
    reason = "the Redis tests need redis-server: apt-get install redis-server (see .ci/run)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


class RedisServer:
    """Debian's `redis-server`, keeping nothing on disk, on one port across restarts."""

    def __init__(self, log_dir: Path) -> None:
        self.binary = require_redis_server()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = log_dir / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        """Start (or start again, on the same port) and wait until it answers PING."""
        command = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited:\n{self.log_path.read_text()}")
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server; its clients see their connections closed."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self) -> redis.Redis:
        """A synchronous client, for a test to look at what the nodes keep in Redis."""
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)
