"""Pages for people: `GET /` says what this server is and how busy; `GET /test` is a playground.

The playground exists only in development mode. It subscribes with a development token and
broadcasts through the real `POST /broadcast`, with tokens this server signs for it: the
browser never holds the secret. Neither page is part of the HTTP API, so both stay out of the
OpenAPI document, and neither loads anything from another origin. sanic-ext's interactive pages
of that document (Swagger UI, ReDoc) load scripts from a CDN: they exist only in development.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import orjson
from sanic import Blueprint, Request
from sanic.exceptions import NotFound
from sanic.response import HTTPResponse, html, json
from sanic_ext import openapi

from bifrost import __version__
from bifrost.client import broadcast_claims
from bifrost.rules.channels import MAX_CHANNEL_NAME_LENGTH, channel_name
from bifrost.rules.devmode import NoSigningAlgorithm, signing_algorithm
from bifrost.rules.settings import Settings
from bifrost.service import service_of

__all__ = [
    "PLAYGROUND_CHANNEL",
    "PlaygroundRefusal",
    "api_pages_in_development_only",
    "pages_bp",
    "playground_broadcast",
]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
PLAYGROUND_CHANNEL = "playground"
PLAYGROUND_TTL = 60.0
# The route of the OpenAPI document among sanic-ext's `/docs` routes: the one kept outside
# development mode, since API clients and the tests' generated requests read it. sanic-ext
# documents no route names; tests/test_dependency_pins.py pins them.
OPENAPI_DOCUMENT_ROUTE = "openapi.spec"
# Same-origin only: the pages load their scripts and styles from here and talk to here.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

pages_bp = Blueprint("pages")


def _serve_static_files(blueprint: Blueprint) -> None:
    """One route per file of the folder, none for the folder itself.

    A request names a file by its route, so no path from a request ever reaches the file
    system: Sanic's folder route resolved it and answered 500, with a traceback in the log
    each time, for the folder (`/static/`), a NUL byte, a name too long or a file taken for a
    folder. Any other path under `/static/` is a 404 like every unknown route.
    """
    for asset in sorted(STATIC_DIR.iterdir()):
        if asset.is_file():
            uri, name = f"/static/{asset.name}", f"static-{asset.name}"
            blueprint.static(uri, asset, name=name, resource_type="file")


_serve_static_files(pages_bp)


class PlaygroundRefusal(Exception):
    """A playground request that cannot be signed; its text is the reason shown on the page."""


@pages_bp.get("/")
@openapi.exclude()
async def status_page(request: Request) -> HTTPResponse:
    """What this server is, with its figures and deliveries per second, live."""
    page = _read("status.html")
    page = page.replace("{{version}}", __version__)
    page = page.replace("{{dev_hidden}}", "" if request.app.state.is_debug else "hidden")
    return _page(page)


@pages_bp.get("/test")
@openapi.exclude()
async def playground_page(request: Request) -> HTTPResponse:
    """Development only: watch a channel's events and broadcast to it from a form."""
    _development_only(request)
    page = _read("playground.html")
    return _page(page.replace("{{max_channel_name_length}}", str(MAX_CHANNEL_NAME_LENGTH)))


@pages_bp.get("/test/token")
@openapi.exclude()
async def playground_subscribe_token(request: Request) -> HTTPResponse:
    """Development only: a subscribe token for `?channel=` (default `playground`)."""
    _development_only(request)
    settings = service_of(request.app).settings
    try:
        channel = _channel(request.args.get("channel", PLAYGROUND_CHANNEL))
        algorithm = _signing_algorithm(settings)
    except PlaygroundRefusal as refusal:
        return json({"error": str(refusal)}, status=400)
    token = jwt.encode({"channels": [channel]}, settings.jwt_secret, algorithm)
    return json({"channel": channel, "token": token})


@pages_bp.post("/test/broadcast-token")
@openapi.exclude()
async def playground_broadcast_token(request: Request) -> HTTPResponse:
    """Development only: a broadcast token for `{channel, event, data}`, valid 60 s.

    The page posts it to `/broadcast` itself, as an application's server would.
    """
    _development_only(request)
    settings = service_of(request.app).settings
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        return json({"error": "body must be JSON: {channel, event, data}"}, status=400)
    try:
        token = playground_broadcast(settings, body)
    except PlaygroundRefusal as refusal:
        return json({"error": str(refusal)}, status=400)
    return json({"token": token})


def playground_broadcast(settings: Settings, body: Any) -> str:
    """The signed broadcast token a playground form asks for, or the reason it cannot be."""
    if not isinstance(body, dict):
        raise PlaygroundRefusal("body must be a JSON object: {channel, event, data}")
    channel = _channel(body.get("channel", PLAYGROUND_CHANNEL))
    event = body.get("event")
    if not isinstance(event, str) or not event:
        raise PlaygroundRefusal("event must be a non-empty string")
    claims = broadcast_claims(channel, event, body.get("data"), PLAYGROUND_TTL)
    return jwt.encode(claims, settings.jwt_secret, _signing_algorithm(settings))


async def api_pages_in_development_only(request: Request) -> None:
    """Outside development mode, answer 404 for sanic-ext's pages around the OpenAPI document.

    Swagger UI and ReDoc load their scripts from a third-party CDN, which a production server
    must not hand to its users' browsers. sanic-ext reads whether to build them when the
    server starts, before Sanic tells the app whether it runs in development mode, so they
    are refused here, as the playground is.
    """
    route = request.route
    if route is None or request.app.state.is_debug:
        return
    name = route.name.removeprefix(f"{request.app.name}.")
    if name.startswith("openapi.") and name != OPENAPI_DOCUMENT_ROUTE:
        raise NotFound(
            "The API pages exist only in development mode (sanic --dev); "
            "the OpenAPI document is /docs/openapi.json"
        )


def _development_only(request: Request) -> None:
    if not request.app.state.is_debug:
        raise NotFound("The playground exists only in development mode (sanic --dev)")


def _channel(value: object) -> str:
    """A channel name the tokens accept, or the refusal that says why it is none."""
    try:
        return channel_name(value)
    except ValueError as refusal:
        raise PlaygroundRefusal(str(refusal)) from None


def _signing_algorithm(settings: Settings) -> str:
    """The algorithm of every development token, refused with its reason on the page."""
    try:
        return signing_algorithm(settings)
    except NoSigningAlgorithm as refusal:
        raise PlaygroundRefusal(str(refusal)) from None


def _read(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def _page(text: str) -> HTTPResponse:
    return html(
        text,
        headers={
            "content-security-policy": CONTENT_SECURITY_POLICY,
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
            "cache-control": "no-cache",
        },
    )
