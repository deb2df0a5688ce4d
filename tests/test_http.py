"""The HTTP surface in-process with sanic-testing: statuses and JSON bodies."""

from __future__ import annotations

import time
from itertools import count

import jwt
import pytest
from sanic import Sanic

from bifrost.app import create_app
from bifrost.rules.settings import Settings

SECRET = "h" * 64
app_numbers = count()


@pytest.fixture
def app() -> Sanic:
    Sanic.test_mode = True
    return create_app(Settings(jwt_secret=SECRET), name=f"bifrost-http-{next(app_numbers)}")


def broadcast_body(**claims: object) -> dict[str, str]:
    claims.setdefault("exp", int(time.time()) + 60)
    return {"token": jwt.encode(claims, SECRET, "HS512")}


def test_info_json_shape(app: Sanic):
    """`/info.json` answers the original's `stats` object with zero counts at start."""
    _, response = app.test_client.get("/info.json")
    assert response.status == 200
    assert response.json["stats"]["deliveries"] == 0
    assert response.json["stats"]["connected"] == 0


def test_broadcast_success_shape(app: Sanic):
    """A valid broadcast answers 200 `{"message":"Success","deliveries":N}`."""
    body = broadcast_body(channel="c", message={"event": "e", "data": "{}"})
    _, response = app.test_client.post("/broadcast", json=body)
    assert response.status == 200
    assert response.json == {"message": "Success", "deliveries": 0}


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"", 400),
        (b"{", 400),
        (b'{"token": ""}', 400),
        (b'{"tok": "x"}', 400),
    ],
)
def test_broadcast_refusals(app: Sanic, content: bytes, status: int):
    """Bad bodies get their status and a JSON `error`."""
    _, response = app.test_client.post("/broadcast", content=content)
    assert response.status == status
    assert set(response.json) == {"error"}


def test_unknown_routes_and_methods_answer_json(app: Sanic):
    """Sanic's own errors read like ours: a JSON `error`, never an HTML page."""
    _, missing = app.test_client.get("/nowhere")
    _, wrong_method = app.test_client.get("/broadcast")
    assert (missing.status, wrong_method.status) == (404, 405)
    assert "error" in missing.json and "error" in wrong_method.json


def test_subscribe_over_plain_http_is_told_to_upgrade(app: Sanic):
    """A plain GET of `/subscribe` gets 426 Upgrade Required with `Upgrade: websocket` and a
    JSON error saying what is missing."""
    _, response = app.test_client.get("/subscribe")
    assert response.status == 426
    assert response.headers["upgrade"] == "websocket"
    assert "Connection" in response.json["error"]
