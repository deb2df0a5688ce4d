"""`GET /subscribe`: the websocket browsers hold open to hear their channels.

A thin shell: `bifrost.protocol` decides what each frame means, this module carries it out.
"""

from __future__ import annotations

import logging
from time import monotonic

from sanic import Blueprint, Request, Sanic
from sanic.response import HTTPResponse, json
from sanic.server.websockets.impl import WebsocketImplProtocol
from sanic_ext import openapi

from bifrost import metrics
from bifrost.connection import Subscriber
from bifrost.protocol import (
    NOT_AUTHORIZED,
    PONG,
    RATE_LIMIT,
    Authenticate,
    Close,
    ErrorReply,
    Ignore,
    Pong,
    error_reply,
    interpret_frame,
    subscribed_reply,
)
from bifrost.service import Service, service_of
from bifrost.tokens import TokenRejected

__all__ = ["subscribe_bp"]

logger = logging.getLogger("bifrost.subscribe")

subscribe_bp = Blueprint("subscribe")


@subscribe_bp.before_server_start(priority=100)
async def leave_out_of_openapi(app: Sanic) -> None:
    """A websocket is no HTTP operation: its protocol is in the README, not in the OpenAPI.

    Sanic wraps websocket handlers when it registers them, so the wrapper is what to exclude,
    before the OpenAPI document is built.
    """
    for route in app.router.routes:
        if route.extra.websocket:
            openapi.exclude()(route.handler)


@subscribe_bp.on_request
async def admit_handshake(request: Request) -> HTTPResponse | None:
    """Refuse a handshake before it upgrades: foreign origins and a full process."""
    settings = service_of(request.app).settings
    origin = request.headers.get("origin")
    if settings.allowed_origins and origin and origin.rstrip("/") not in settings.allowed_origins:
        logger.info("refused handshake from origin %s", origin)
        metrics.handshake_refused("origin")
        return json({"error": "Origin not allowed"}, status=403)
    if service_of(request.app).registry.connected >= settings.max_connections:
        logger.warning("refused handshake: %d connections open", settings.max_connections)
        metrics.handshake_refused("full")
        return json({"error": "Too many connections, try another instance"}, status=503)
    return None


@subscribe_bp.websocket("/subscribe")
async def subscribe(request: Request, ws: WebsocketImplProtocol) -> None:
    """Serve one subscriber until it leaves or is closed."""
    service = service_of(request.app)
    settings = service.settings
    subscriber = Subscriber(
        ws,
        max_pending_bytes=settings.max_pending_bytes,
        max_frames_per_second=settings.max_frames_per_second,
        now=monotonic(),
    )
    service.registry.connect(subscriber)
    try:
        async for frame in ws:
            # After the server's close frame, read on until the client's, ignoring the rest.
            if not subscriber.closed:
                await _handle_frame(service, subscriber, frame, request.client_ip)
    finally:
        for channel in service.registry.disconnect(subscriber):
            await service.broker.channel_vacated(channel)


async def _handle_frame(
    service: Service, subscriber: Subscriber, frame: str | bytes, peer: str
) -> None:
    """Carry out what one frame asks."""
    now = monotonic()
    subscriber.liveness.heard(now)
    if not subscriber.budget.spend(now):
        rate = service.settings.max_frames_per_second
        logger.info("closing socket of %s: over %g frames/s", peer, rate)
        subscriber.close(RATE_LIMIT)
        return
    match interpret_frame(frame):
        case Authenticate(token=token):
            await _authenticate(service, subscriber, token, peer)
        case Pong():
            subscriber.send(PONG)
        case ErrorReply(reason=reason):
            subscriber.send(error_reply(reason))
        case Ignore():
            pass
        case Close() as close:
            logger.info("closing socket of %s: %s", peer, close.reason)
            subscriber.close(close)


async def _authenticate(service: Service, subscriber: Subscriber, token: object, peer: str) -> None:
    """Subscribe to the channels the token grants, or close the socket as not authorised."""
    try:
        channels = service.verifier.subscribe_channels(token)
    except TokenRejected as rejection:
        logger.info("authentication failed for %s: %s", peer, rejection)
        metrics.authentication_failed("subscribe", str(rejection))
        subscriber.close(NOT_AUTHORIZED)
        return
    for channel in service.registry.subscribe(subscriber, channels):
        await service.broker.channel_occupied(channel)
    subscriber.liveness.authenticated = True
    for channel in channels:
        subscriber.send(subscribed_reply(channel))
