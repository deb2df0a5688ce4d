"""`GET /subscribe`: the websocket (or event stream) browsers hold open to hear their channels.

A thin shell: `bifrost.rules.admission` decides whether a handshake is let on,
`bifrost.rules.protocol` what each message asks, and `bifrost.rules.event_stream` and
`bifrost.rules.event_ids` what an event stream's request says; this module carries it out.
Both transports then share one path: the same registry and fan-out, and the same recovery
(hold, snapshot, `plan_recovery`, the recovered messages). The registry says which channels
gain their first socket or lose their last, and the broker is told in that step.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Collection, Coroutine
from time import monotonic
from typing import Any, cast

from sanic import Blueprint, Request, Sanic
from sanic.response import HTTPResponse, json, raw
from sanic_ext import openapi
from websockets.server import ServerProtocol

from bifrost import metrics
from bifrost.bounded_http import close_after_answer, open_connections
from bifrost.brokers.base import BrokerUnavailable
from bifrost.connection import CLOSE_HANDSHAKE_TIMEOUT, Subscriber
from bifrost.event_stream import EventStream
from bifrost.handshake import hand_over, refuse, upgrade
from bifrost.rules.admission import Refusal, admission_refusal, hand_over_refusal
from bifrost.rules.event_ids import IdLayouts, since_from_id, start_cursor
from bifrost.rules.event_stream import (
    RETRY_MS,
    answer_headers,
    come_back_later,
    cors_headers,
    response_head,
    stream_token,
    wants_event_stream,
)
from bifrost.rules.history import (
    plan_recovery,
    positioned_json,
    positioned_subscribed_json,
    unpositioned_subscribed_json,
)
from bifrost.rules.positions import Position
from bifrost.rules.protocol import (
    NOT_AUTHORIZED,
    PONG,
    SERVICE_RESTART,
    TRY_AGAIN_LATER,
    Authenticate,
    ErrorReply,
    Ignore,
    Pong,
    channel_total_refusal,
    error_reply,
    interpret_frame,
    subscribed_json,
)
from bifrost.rules.tokens import TokenRejected
from bifrost.service import Service, context_of, service_of
from bifrost.subscribers import Connected, JsonFrame

__all__ = ["subscribe_bp"]

logger = logging.getLogger("bifrost.subscribe")

subscribe_bp = Blueprint("subscribe")

# Below the app's 0: opened after the service is made, closed before it is let go of, and
# after it has begun to stop (`bifrost.app.BEGIN_STOPPING_PRIORITY`).
SUBSCRIPTIONS_PRIORITY = -10
# A positioned socket's authenticate is carried out whole before the next: its new channels'
# messages are held until it has recovered them.
RECOVERY_IN_FLIGHT = "an authenticate is still being carried out: send the next after its replies"
# How often shutdown looks whether every socket has finished its closing handshake.
CLOSE_POLL_INTERVAL = 0.02


async def open_subscriptions(app: Sanic[Any, Any]) -> None:
    """Give the worker its frame rules, once the app's own listener has made its service."""
    context_of(app).subscriptions = Subscriptions(service_of(app))


async def close_subscriptions(app: Sanic[Any, Any]) -> None:
    """Tell every socket to reconnect elsewhere (1012) and wait for them to go, before the
    broker is stopped under them.

    The sockets are Bifröst's, not Sanic's (`bifrost.handshake`), so Sanic's graceful shutdown
    does not wait for them: this does, for at most the closing handshake's timeout, after
    which every socket has been dropped.
    """
    registry = service_of(app).registry
    subscribers = registry.listeners()
    if subscribers:
        logger.info(
            "stopping: closing %d subscribers (websockets with 1012, event streams ended)",
            len(subscribers),
        )
    for subscriber in subscribers:
        subscriber.close(SERVICE_RESTART)
    try:
        async with asyncio.timeout(CLOSE_HANDSHAKE_TIMEOUT + 1):
            while registry.connected:
                await asyncio.sleep(CLOSE_POLL_INTERVAL)
    except TimeoutError:
        logger.warning("stopping: %d sockets still open", registry.connected)
    await _subscriptions_of(app).settle()


# Registered by a call: Sanic's decorator form with a priority returns an untyped decorator.
subscribe_bp.before_server_start(open_subscriptions, priority=SUBSCRIPTIONS_PRIORITY)
subscribe_bp.before_server_stop(close_subscriptions, priority=SUBSCRIPTIONS_PRIORITY)


@subscribe_bp.on_request
async def admit_handshake(request: Request) -> HTTPResponse | None:
    """Refuse a handshake before it upgrades: foreign origins, a full or a stopping process."""
    service = service_of(request.app)
    settings = service.settings
    refusal = admission_refusal(
        origin=request.headers.get("origin"),
        allowed_origins=settings.allowed_origins,
        stopping=service.stopping.is_set(),
        open_connections=open_connections(request),
        max_connections=settings.max_connections,
    )
    if refusal is None:
        return None
    if _wants_event_stream(request):
        return _refuse_stream(request, refusal)
    return refuse(request, refusal)


@subscribe_bp.get("/subscribe")
@openapi.exclude()
async def subscribe(request: Request) -> HTTPResponse | None:
    """Upgrade to a websocket served by a `Subscriber`, or, asked for `text/event-stream`,
    serve an `EventStream`; or answer why not.

    The websocket protocol and the event stream are in the README, not in the OpenAPI
    description.
    """
    if _wants_event_stream(request):
        return _open_stream(request)
    max_frame_bytes = service_of(request.app).settings.max_frame_bytes
    return upgrade(request, _subscriptions_of(request.app).accept, max_frame_bytes)


# Sanic's mark for a handler that answers by upgrading the connection, not with a response;
# an attribute set on a function, which the type checker cannot know of.
subscribe.is_websocket = True  # type: ignore[attr-defined]


def _wants_event_stream(request: Request) -> bool:
    return wants_event_stream(request.headers.get("accept"), request.headers.get("upgrade"))


def _open_stream(request: Request) -> HTTPResponse | None:
    """Verify the token, then answer the 200 and serve the stream from where its
    `Last-Event-ID` (or else `?since=`) says it stopped; a missing or bad token gets 401
    before any stream starts."""
    service = service_of(request.app)
    settings = service.settings
    cors = cors_headers(request.headers.get("origin"), settings.allowed_origins)
    refusal = hand_over_refusal(
        content_length=request.headers.get("content-length"),
        transfer_encoding="transfer-encoding" in request.headers,
        unsent_bytes=cast(asyncio.Transport, request.transport).get_write_buffer_size(),
        request="An event stream",
    )
    if refusal is not None:
        return refuse(request, refusal)
    token = stream_token(request.args.get("token"), request.headers.get("authorization"))
    try:
        channels = service.verifier.subscribe_channels(token)
    except TokenRejected as rejection:
        logger.info("authentication failed for %s: %s", request.ip, rejection)
        metrics.authentication_failed("subscribe", rejection.kind)
        return json({"error": NOT_AUTHORIZED.reason}, status=401, headers=cors)
    subscriptions = _subscriptions_of(request.app)
    layout = subscriptions.layouts.layout(channels)
    last_id = request.headers.get("last-event-id") or request.args.get("since")
    since = since_from_id(last_id, layout) if last_id else {}
    # With history off nothing can be resumed: the id names every channel, at no position.
    cursor = start_cursor(layout, since if settings.history_size else {})
    head = response_head(cors, random.randint(*RETRY_MS))
    stream = hand_over(
        request,
        head,
        lambda transport: EventStream(
            transport,
            subscriptions,
            cursor=cursor,
            max_pending_bytes=settings.max_pending_bytes,
            now=monotonic(),
        ),
    )
    subscriptions.open_stream(stream, channels, since)
    return None


def _refuse_stream(request: Request, refusal: Refusal) -> HTTPResponse:
    """Perform a refusal of a stream request: a process that is full or stopping answers 200
    with a `retry:` and ends the stream at once, since EventSource gives up for good on any
    other status; other refusals (a foreign origin) are answered as a websocket's."""
    if not refusal.try_elsewhere:
        return refuse(request, refusal)
    close_after_answer(request)
    settings = service_of(request.app).settings
    headers = answer_headers(cors_headers(request.headers.get("origin"), settings.allowed_origins))
    body = come_back_later(refusal.reason, random.randint(*RETRY_MS))
    answer = raw(body, headers=headers, content_type=headers["content-type"])
    return refuse(request, refusal, answer)


def _subscriptions_of(app: Sanic[Any, Any]) -> Subscriptions:
    """This worker's subscriptions, which exist from its server's start."""
    subscriptions = context_of(app).subscriptions
    if subscriptions is None:
        raise RuntimeError("the subscriptions exist once the server has started")
    return subscriptions


class Subscriptions:
    """What the frames of `/subscribe` mean for this worker's registry and broker."""

    def __init__(self, service: Service) -> None:
        self._service = service
        # Strong references to the waits on the broker in flight, which the loop holds weakly.
        self._in_flight: set[asyncio.Task[None]] = set()
        # The event streams' id layouts, one per list of channels in use.
        self.layouts = IdLayouts()

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

    def open_stream(
        self, stream: EventStream, channels: list[str], since: dict[str, Position]
    ) -> None:
        """A new event stream, counted from now on, subscribed as a positioned websocket that
        sent this `since` would be: an event stream is always positioned."""
        self._service.registry.connect(stream)
        self._subscribe(stream, channels, since)

    def message_received(self, subscriber: Subscriber, message: str) -> None:
        """Carry out what one message asks."""
        match interpret_frame(message):
            case Authenticate(token=token, since=since):
                self._authenticate(subscriber, token, since)
            case Pong():
                subscriber.send(PONG)
            case ErrorReply(reason=reason):
                subscriber.send(error_reply(reason))
            case Ignore():
                pass

    def closing(self, subscriber: Connected) -> None:
        """Take the socket out of its channels; it counts as connected until it is gone."""
        self._left(self._service.registry.withdraw(subscriber))

    def disconnected(self, subscriber: Connected) -> None:
        """Forget the socket."""
        self._left(self._service.registry.disconnect(subscriber))

    def _left(self, vacated: list[str]) -> None:
        """Tell the broker of channels nobody here hears any more."""
        if vacated and self._service.broker.follows_channels:
            self._service.broker.channels_vacated(vacated)

    def _authenticate(
        self, subscriber: Subscriber, token: object, since: dict[str, Position] | None
    ) -> None:
        """Subscribe to the channels the token grants, or close the socket as not authorised;
        refuse, with an error, channels that would take the socket over its bound."""
        service = self._service
        if subscriber.held is not None:
            subscriber.send(error_reply(RECOVERY_IN_FLIGHT))
            return
        try:
            channels = service.verifier.subscribe_channels(token)
        except TokenRejected as rejection:
            logger.info("authentication failed for %s: %s", subscriber.peer, rejection)
            metrics.authentication_failed("subscribe", rejection.kind)
            subscriber.close(NOT_AUTHORIZED)
            return
        refusal = channel_total_refusal(
            subscriber.channels, channels, service.settings.max_channels
        )
        if refusal is not None:
            logger.info("authenticate refused for %s: %s", subscriber.peer, refusal.reason)
            subscriber.send(error_reply(refusal.reason))
            return
        self._subscribe(subscriber, channels, since)

    def _subscribe(
        self, subscriber: Connected, channels: list[str], since: dict[str, Position] | None
    ) -> None:
        """Subscribe to the channels of a verified token, and recover what `since` asks."""
        service = self._service
        # The token is good: the wait for the broker is bounded by the broker, and is no
        # failure of the client to authenticate.
        subscriber.liveness.authenticated = True
        if since is not None and service.settings.history_size:
            service.registry.position(subscriber)
        if subscriber.positioned:
            self._recover(subscriber, channels, since or {})
            return
        unrecovered = () if since is None else since.keys()
        occupied = service.registry.subscribe(subscriber, channels)
        broker = service.broker
        if not broker.follows_channels:
            _confirm(subscriber, channels, unrecovered)
            return
        if occupied:
            broker.channels_occupied(occupied)
        self._run(self._confirm_once_subscribed(subscriber, channels, unrecovered))

    async def _confirm_once_subscribed(
        self, subscriber: Connected, channels: list[str], unrecovered: Collection[str]
    ) -> None:
        """Say `subscribed` only once the broker carries every channel's broadcasts here, or
        tell the client to come back when it cannot say so in time."""
        try:
            await self._service.broker.wait_subscribed(channels)
        except BrokerUnavailable as error:
            self._unavailable(subscriber, error)
            return
        _confirm(subscriber, channels, unrecovered)

    def _recover(
        self, subscriber: Connected, channels: list[str], since: dict[str, Position]
    ) -> None:
        """Subscribe a positioned socket to its new channels live, holding what they bring,
        then tell it where each continues and send what it missed before releasing them."""
        new = [channel for channel in channels if channel not in subscriber.channels]
        subscriber.held = []
        occupied = self._service.registry.subscribe(subscriber, new)
        if occupied and self._service.broker.follows_channels:
            self._service.broker.channels_occupied(occupied)
        self._run(self._release_once_recovered(subscriber, channels, new, since))

    async def _release_once_recovered(
        self,
        subscriber: Connected,
        channels: list[str],
        new: list[str],
        since: dict[str, Position],
    ) -> None:
        settings = self._service.settings
        broker = self._service.broker
        try:
            await broker.wait_subscribed(new)
            snapshots = await broker.snapshot(new, since) if new else {}
        except BrokerUnavailable as error:
            subscriber.held = None
            self._unavailable(subscriber, error)
            return
        held, subscriber.held = subscriber.held or [], None
        if subscriber.closed:
            return
        recovery = plan_recovery(
            new, since, snapshots, settings.history_size, settings.max_pending_bytes // 2
        )
        frames: list[JsonFrame] = []
        for channel in channels:
            start = recovery.starts.get(channel)
            if start is None:  # heard already: its messages simply go on
                frames.append((subscribed_json(channel), ()))
            else:
                recovered = recovery.recovered.get(channel)
                reply = positioned_subscribed_json(channel, start, recovered)
                frames.append((reply, ((channel, start),)))
        for entry in recovery.messages(held, subscriber.channels):
            frames.append((positioned_json(entry.payload, entry.positions), entry.positions))
        # One write for the replies and what was missed: a storm's sockets each recover at once.
        subscriber.send_json(frames)

    def _unavailable(self, subscriber: Connected, error: BrokerUnavailable) -> None:
        """The broker cannot say the socket hears its channels: it must come back later."""
        if not subscriber.closed:
            logger.warning("closing socket of %s: %s", subscriber.peer, error)
            subscriber.close(TRY_AGAIN_LATER)

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


def _confirm(subscriber: Connected, channels: list[str], unrecovered: Collection[str]) -> None:
    """`subscribed` for each channel; with history off, one that `since` named is not
    recovered, there being nothing to resume from."""
    subscriber.send_json(
        (unpositioned_subscribed_json(c) if c in unrecovered else subscribed_json(c), ())
        for c in channels
    )
