"""`GET /subscribe`: the websocket browsers hold open to hear their channels.

A thin shell: `bifrost.rules.protocol` decides what each frame means, this module carries it out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from time import monotonic
from typing import Any

from sanic import Blueprint, Request, Sanic
from sanic.response import HTTPResponse, json
from sanic_ext import openapi
from websockets.server import ServerProtocol

from bifrost import metrics
from bifrost.bounded_http import close_after_answer, open_connections
from bifrost.brokers.base import BrokerUnavailable
from bifrost.connection import Subscriber
from bifrost.handshake import upgrade
from bifrost.rules.protocol import (
    NOT_AUTHORIZED,
    PONG,
    TRY_AGAIN_LATER,
    Authenticate,
    Close,
    ErrorReply,
    Ignore,
    Pong,
    channel_total_refusal,
    error_reply,
    interpret_frame,
    subscribed_reply,
)
from bifrost.rules.text import printable
from bifrost.rules.tokens import TokenRejected
from bifrost.service import Service, service_of

__all__ = ["subscribe_bp"]

logger = logging.getLogger("bifrost.subscribe")

subscribe_bp = Blueprint("subscribe")


async def open_subscriptions(app: Sanic[Any, Any]) -> None:
    """Give the worker its frame rules, once the app's own listener has made its service."""
    app.ctx.subscriptions = Subscriptions(service_of(app))


# Registered by a call: Sanic's decorator form with a priority returns an untyped decorator.
subscribe_bp.before_server_start(open_subscriptions, priority=-10)


@subscribe_bp.on_request
async def admit_handshake(request: Request) -> HTTPResponse | None:
    """Refuse a handshake before it upgrades: foreign origins, a full or a stopping process."""
    service = service_of(request.app)
    settings = service.settings
    origin = request.headers.get("origin")
    if settings.allowed_origins and origin and origin.rstrip("/") not in settings.allowed_origins:
        logger.info("refused handshake from origin %s", printable(origin))
        metrics.handshake_refused("origin")
        return json({"error": "Origin not allowed"}, status=403)
    if service.stopping.is_set():
        # Its sockets are being closed with 1012: the client must go to a live instance.
        metrics.handshake_refused("stopping")
        return json({"error": "Shutting down, try another instance"}, status=503)
    if open_connections(request) > settings.max_connections:
        # Closed once answered, so that it does not go on counting as open.
        logger.warning("refused handshake: %d connections open", settings.max_connections)
        metrics.handshake_refused("full")
        close_after_answer(request)
        return json({"error": "Too many connections, try another instance"}, status=503)
    return None


@subscribe_bp.get("/subscribe")
@openapi.exclude()
async def subscribe(request: Request) -> HTTPResponse | None:
    """Upgrade to a websocket served by a `Subscriber`, or answer why not.

    The websocket protocol is in the README, not in the OpenAPI description.
    """
    subscriptions: Subscriptions = request.app.ctx.subscriptions
    max_frame_bytes = service_of(request.app).settings.max_frame_bytes
    return upgrade(request, subscriptions.accept, max_frame_bytes)


# Sanic's mark for a handler that answers by upgrading the connection, not with a response;
# an attribute set on a function, which the type checker cannot know of.
subscribe.is_websocket = True  # type: ignore[attr-defined]


class Subscriptions:
    """What the frames of `/subscribe` mean for this worker's registry and broker."""

    def __init__(self, service: Service) -> None:
        self._service = service
        # Strong references to the waits on the broker in flight, which the loop holds weakly.
        self._in_flight: set[asyncio.Task[None]] = set()

    def accept(self, transport: asyncio.Transport, ws: ServerProtocol) -> Subscriber:
        """A new socket, counted from now on."""
        settings = self._service.settings
        subscriber = Subscriber(
            transport,
            ws,
            self,
            max_pending_bytes=settings.max_pending_bytes,
            max_frames_per_second=settings.max_frames_per_second,
            now=monotonic(),
        )
        self._service.registry.connect(subscriber)
        return subscriber

    def message_received(self, subscriber: Subscriber, message: str | bytes) -> None:
        """Carry out what one message asks."""
        match interpret_frame(message):
            case Authenticate(token=token):
                self._authenticate(subscriber, token)
            case Pong():
                subscriber.send(PONG)
            case ErrorReply(reason=reason):
                subscriber.send(error_reply(reason))
            case Ignore():
                pass
            case Close() as close:
                logger.info("closing socket of %s: %s", subscriber.peer, close.reason)
                subscriber.close(close)

    def closing(self, subscriber: Subscriber) -> None:
        """Take the socket out of its channels; it counts as connected until it is gone."""
        self._left(self._service.registry.withdraw(subscriber))

    def disconnected(self, subscriber: Subscriber) -> None:
        """Forget the socket."""
        self._left(self._service.registry.disconnect(subscriber))

    def _left(self, vacated: list[str]) -> None:
        """Tell the broker of channels nobody here hears any more."""
        if vacated and self._service.broker.follows_channels:
            self._service.broker.channels_vacated(vacated)

    def _authenticate(self, subscriber: Subscriber, token: object) -> None:
        """Subscribe to the channels the token grants, or close the socket as not authorised;
        refuse, with an error, channels that would take the socket over its bound."""
        service = self._service
        try:
            channels = service.verifier.subscribe_channels(token)
        except TokenRejected as rejection:
            logger.info("authentication failed for %s: %s", subscriber.peer, rejection)
            metrics.authentication_failed("subscribe", str(rejection))
            subscriber.close(NOT_AUTHORIZED)
            return
        refusal = channel_total_refusal(
            subscriber.channels, channels, service.settings.max_channels
        )
        if refusal is not None:
            logger.info("authenticate refused for %s: %s", subscriber.peer, refusal.reason)
            subscriber.send(error_reply(refusal.reason))
            return
        # The token is good: the wait for the broker is bounded by the broker, and is no
        # failure of the client to authenticate.
        subscriber.liveness.authenticated = True
        occupied = service.registry.subscribe(subscriber, channels)
        broker = service.broker
        if not broker.follows_channels:
            _confirm(subscriber, channels)
            return
        if occupied:
            broker.channels_occupied(occupied)
        self._run(self._confirm_once_subscribed(subscriber, channels))

    async def _confirm_once_subscribed(self, subscriber: Subscriber, channels: list[str]) -> None:
        """Say `subscribed` only once the broker carries every channel's broadcasts here, or
        tell the client to come back when it cannot say so in time."""
        try:
            await self._service.broker.wait_subscribed(channels)
        except BrokerUnavailable as error:
            if not subscriber.closed:
                logger.warning("closing socket of %s: %s", subscriber.peer, error)
                subscriber.close(TRY_AGAIN_LATER)
            return
        _confirm(subscriber, channels)

    def _run(self, call: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(call)
        self._in_flight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("broker call failed", exc_info=task.exception())

    async def settle(self) -> None:
        """Wait for the sockets waiting on the broker, before it is stopped under them."""
        await asyncio.gather(*self._in_flight, return_exceptions=True)


def _confirm(subscriber: Subscriber, channels: list[str]) -> None:
    for channel in channels:
        subscriber.send(subscribed_reply(channel))
