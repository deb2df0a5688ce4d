"""`POST /broadcast`: the application's server sends one signed message to channels.

Every failure answers a JSON error and a status the sender can act on; a message that was
not carried is never answered with success.
"""

from __future__ import annotations

import logging
from time import perf_counter

import orjson
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json
from sanic_ext import openapi

from bifrost import metrics
from bifrost.blueprints.schemas import BroadcastAnswer, BroadcastRequest, ErrorAnswer
from bifrost.bounded_http import close_after_answer
from bifrost.brokers.base import BrokerUnavailable
from bifrost.rules.tokens import TokenRejected
from bifrost.service import service_of

__all__ = ["broadcast_bp"]

logger = logging.getLogger("bifrost.broadcast")

broadcast_bp = Blueprint("broadcast")

# With history on, positioned sockets find a message's positions under this key of its frame.
POSITIONS_KEY = "positions"


@broadcast_bp.post("/broadcast")
@openapi.body({"application/json": BroadcastRequest}, required=True)
@openapi.response(200, {"application/json": BroadcastAnswer}, "Handed to every subscriber")
@openapi.response(400, {"application/json": ErrorAnswer}, "Not JSON, no token, or a bad token")
@openapi.response(413, {"application/json": ErrorAnswer}, "Message over the size limit")
@openapi.response(503, {"application/json": ErrorAnswer}, "Not delivered: broker down, restarting")
async def broadcast(request: Request) -> HTTPResponse:
    """Verify the token, then hand its message to every subscriber of its channels."""
    service = service_of(request.app)
    if service.stopping.is_set():
        # Its sockets are closed: the sender must retry on an instance that is not stopping,
        # on a new connection (Sanic writes its own `Connection` header over a handler's).
        metrics.broadcast_answered(503)
        close_after_answer(request)
        return json({"error": "service restarting: not delivered, retry"}, status=503)
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        return _error('body must be JSON of the form {"token": "<jwt>"}', 400)
    if not isinstance(body, dict) or "token" not in body:
        return _error("body has no token", 400)
    try:
        order = service.verifier.broadcast_order(body["token"])
    except TokenRejected as rejection:
        logger.info("broadcast refused for %s: %s", request.client_ip, rejection)
        metrics.authentication_failed("broadcast", rejection.kind)
        return _error(str(rejection), 400)
    payload = order.payload
    limit = service.settings.max_message_bytes
    if len(payload) > limit:
        return _error(f"message is {len(payload)} bytes of JSON, over the limit of {limit}", 413)
    if service.settings.history_size and POSITIONS_KEY in order.message:
        return _error(f"message key {POSITIONS_KEY!r} is the positions' own with history on", 400)
    started = perf_counter()
    try:
        published = await service.broker.publish(order.channels, payload)
    except BrokerUnavailable as failure:
        logger.warning("broadcast not delivered: %s", failure)
        return _error(f"message not delivered: {failure}", 503)
    metrics.broadcast_delivered(published.deliveries, perf_counter() - started)
    answer: dict[str, object] = {"message": "Success", "deliveries": published.deliveries}
    if published.positions is not None:
        answer["positions"] = {
            channel: {"epoch": position.epoch, "offset": position.offset}
            for channel, position in published.positions
        }
    return json(answer)


def _error(reason: str, status: int) -> HTTPResponse:
    metrics.broadcast_answered(status)
    return json({"error": reason}, status=status)
