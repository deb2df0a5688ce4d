"""`GET /healthz` and `GET /readyz`: alive while the process serves, ready while it can deliver."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import count

import httpx
import pytest
from sanic import Sanic

from bifrost.app import create_app
from bifrost.brokers.base import Broker, Published, Totals
from bifrost.rules.history import ChannelSnapshot
from bifrost.rules.positions import Position
from bifrost.rules.settings import Settings
from bifrost.service import Service, service_of
from tests.live import BifrostServer

SECRET = "h" * 64
REDIS_LOST = "Redis unreachable: connection refused"
app_numbers = count()


class UnreachableBroker(Broker):
    """A broker that has lost its peers: it says why, and fails any call that would wait on them."""

    def __init__(self, reason: str | None) -> None:
        self.reason = reason

    async def start(self) -> None:
        """Nothing to connect to."""

    async def stop(self) -> None:
        """Nothing to let go of."""

    def channels_occupied(self, channels: Sequence[str]) -> None:
        """No channels in these tests."""

    def channels_vacated(self, channels: Sequence[str]) -> None:
        """No channels in these tests."""

    async def wait_subscribed(self, channels: Sequence[str]) -> None:
        """No channels in these tests."""

    async def publish(self, channels: Sequence[str], payload: bytes) -> Published:
        raise AssertionError("a health check must not publish")

    async def snapshot(
        self, channels: Sequence[str], since: Mapping[str, Position]
    ) -> dict[str, ChannelSnapshot]:
        raise AssertionError("a health check must not read history")

    async def totals(self) -> Totals:
        raise AssertionError("a health check must not ask the other processes for figures")

    def unavailable_reason(self) -> str | None:
        return self.reason


def app_where(change: Callable[[Service], None]) -> Sanic:
    """An in-process app whose service is changed by `change` once its server has started."""
    Sanic.test_mode = True
    app = create_app(Settings(jwt_secret=SECRET), name=f"bifrost-health-{next(app_numbers)}")

    @app.after_server_start
    async def change_service(app: Sanic) -> None:
        change(service_of(app))

    return app


def with_broker(reason: str | None) -> Callable[[Service], None]:
    def swap(service: Service) -> None:
        service.broker = UnreachableBroker(reason)

    return swap


@pytest.fixture
def live(start_server: Callable[..., BifrostServer]) -> BifrostServer:
    return start_server(name="health")


def test_alive_and_ready_over_http(live: BifrostServer):
    """A serving process answers `/healthz` 200 ok and `/readyz` 200 ready, as JSON."""
    with httpx.Client(base_url=live.url) as http:
        health, ready = http.get("/healthz"), http.get("/readyz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    for response in (health, ready):
        assert response.headers["content-type"] == "application/json"


def test_health_routes_answer_get_only(live: BifrostServer):
    """The health routes are read-only: a POST is refused with 405, not mistaken for a check."""
    for path in ("/healthz", "/readyz"):
        assert httpx.post(f"{live.url}{path}").status_code == 405


def test_not_ready_while_the_broker_says_why():
    """`/readyz` answers 503 unavailable with the broker's reason while it cannot deliver."""
    _, ready = app_where(with_broker(REDIS_LOST)).test_client.get("/readyz")
    assert ready.status == 503
    assert ready.json == {"status": "unavailable", "reason": REDIS_LOST}


def test_alive_while_not_ready():
    """`/healthz` stays 200 while the broker is lost: the process must not be restarted for it."""
    _, health = app_where(with_broker(REDIS_LOST)).test_client.get("/healthz")
    assert (health.status, health.json) == (200, {"status": "ok"})


def test_ready_checks_wait_on_nothing():
    """`/readyz` answers from the broker's own state, without a round trip to other processes."""
    _, ready = app_where(with_broker(None)).test_client.get("/readyz")
    assert (ready.status, ready.json) == (200, {"status": "ready"})


def test_not_ready_once_stopping():
    """Once the process begins to stop, `/readyz` answers 503 so that traffic goes elsewhere."""
    _, ready = app_where(lambda service: service.stopping.set()).test_client.get("/readyz")
    assert ready.status == 503
    assert ready.json == {"status": "unavailable", "reason": "service restarting"}
