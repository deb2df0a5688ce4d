"""Fixtures that start real Bifröst servers and connect real clients to them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.live import BifrostServer
from tests.redis_server import RedisServer

# Short timeouts so that the rules of time can be seen in seconds, scaled for a slow machine.
CONTRACT_ENV = {
    "BIFROST_AUTH_TIMEOUT": "1.0",
    "BIFROST_MAX_FRAME_BYTES": "4096",
    "BIFROST_MAX_MESSAGE_BYTES": "2048",
    "BIFROST_MAX_FRAMES_PER_SECOND": "50",
    "BIFROST_ALLOWED_ORIGINS": "https://app.example.com",
}


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def server(log_dir: Path) -> Iterator[BifrostServer]:
    """A server shared by the contract tests, with short limits."""
    live = BifrostServer(log_dir, CONTRACT_ENV, name="contract").start()
    yield live
    live.stop()
    live.assert_log_clean()


@pytest.fixture
def start_server(log_dir: Path) -> Iterator[Callable[..., BifrostServer]]:
    """Start servers of a test's own settings; each is stopped and its log checked afterwards."""
    started: list[BifrostServer] = []

    def start(env: dict[str, str] | None = None, **kwargs: Any) -> BifrostServer:
        live = BifrostServer(log_dir, env, **kwargs).start()
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()
        live.assert_log_clean()


@pytest.fixture
def redis_server(log_dir: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own; asked for before `start_server`, so that it stops
    after the nodes that use it."""
    redis = RedisServer(log_dir).start()
    yield redis
    redis.stop()
