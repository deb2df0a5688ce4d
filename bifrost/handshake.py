"""The websocket handshake, answered by the `websockets` library, and the hand-over from Sanic.

Sanic parses the upgrade request and runs the middleware (origin and capacity checks);
`bifrost.rules.admission` decides every refusal, which `refuse` performs; the library
validates the request and writes the 101 answer; the connection is then taken from
Sanic's HTTP protocol and given to the protocol object that serves the socket from then on
(`bifrost.connection.Subscriber`). Sanic's own websocket machinery is never started, so a
socket costs one object and no task. An event stream's connection is handed over the same
way (`hand_over`), after the head of its 200, to a `bifrost.event_stream.EventStream`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TypeVar, cast

from sanic import Request
from sanic.http import Http
from sanic.response import HTTPResponse, json
from sanic.server import HttpProtocol
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeader
from websockets.http11 import Request as UpgradeRequest
from websockets.http11 import Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from bifrost import metrics
from bifrost.bounded_http import close_after_answer
from bifrost.rules.admission import (
    Refusal,
    hand_over_refusal,
    handshake_headers,
    invalid_header_refusal,
    library_refusal,
)

__all__ = [
    "SocketFactory",
    "accept_upgrade",
    "hand_over",
    "refuse",
    "switch_protocol",
    "upgrade",
]

# Every refusal is of a `/subscribe` handshake, and logged where an operator looks for them.
logger = logging.getLogger("bifrost.subscribe")
# The library's own logger for its sockets, looked up once: left to it, every socket's parser
# looks it up again (the logging module's lock and registry).
LIBRARY_LOGGER = logging.getLogger("websockets.server")

SocketFactory = Callable[[asyncio.Transport, ServerProtocol], asyncio.Protocol]
P = TypeVar("P", bound=asyncio.Protocol)


def upgrade(request: Request, serve: SocketFactory, max_frame_bytes: int) -> HTTPResponse | None:
    """Switch the request's connection to a websocket served by `serve(transport, parser)`.

    Returns the JSON error to answer when the request is no valid websocket upgrade, or None
    once the 101 is written and the connection belongs to the new protocol.
    """
    # Sanic types it as any transport; over HTTP/1.1 it is the event loop's TCP transport.
    transport = cast(asyncio.Transport, request.transport)
    refusal = hand_over_refusal(
        content_length=request.headers.get("content-length"),
        transfer_encoding="transfer-encoding" in request.headers,
        unsent_bytes=transport.get_write_buffer_size(),
    )
    if refusal is not None:
        return refuse(request, refusal)
    try:
        ws, answer = accept_upgrade(request.path, request.headers.items(), max_frame_bytes)
    except InvalidHeader as error:
        return refuse(request, invalid_header_refusal(str(error)))
    if answer.status_code != 101:
        return refuse(request, _library_refusal(answer, ws.handshake_exc))
    hand_over(request, answer.serialize(), lambda transport: serve(transport, ws))
    return None


def accept_upgrade(
    path: str, headers: Iterable[tuple[str, str]], max_frame_bytes: int
) -> tuple[ServerProtocol, Response]:
    """The library's answer to an upgrade request of `path` with these headers (a 101, or why
    not), and the socket's frame parser; raises InvalidHeader for a value the library refuses."""
    # Made open: the request is read already, so the parser starts at the first frame.
    ws = ServerProtocol(max_size=max_frame_bytes, state=State.OPEN, logger=LIBRARY_LOGGER)
    read = Headers(handshake_headers(headers))
    return ws, ws.accept(UpgradeRequest(path=path, headers=read))


def hand_over(request: Request, head: bytes, serve: Callable[[asyncio.Transport], P]) -> P:
    """Write the answer's head, take the request's connection from Sanic, and give it to the
    protocol `serve` makes, fed first what Sanic read past the request."""
    # Sanic types it as any transport; over HTTP/1.1 it is the event loop's TCP transport.
    transport = cast(asyncio.Transport, request.transport)
    http = transport.get_protocol()
    assert isinstance(http, HttpProtocol), "served by Sanic's HTTP/1.1 protocol"
    # Sanic's own buffer of bytes read and not parsed: frames sent right behind the request.
    unread = bytes(http.recv_buffer)
    _release(http, request)
    return switch_protocol(transport, head, serve, unread)


def switch_protocol(
    transport: asyncio.Transport,
    head: bytes,
    serve: Callable[[asyncio.Transport], P],
    unread: bytes,
) -> P:
    """Write the answer's head and give the connection to the protocol `serve` makes, fed
    first the bytes read past the request."""
    transport.write(head)
    protocol = serve(transport)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    transport.resume_reading()
    if unread:
        protocol.data_received(unread)
    return protocol


def refuse(request: Request, refusal: Refusal, answer: HTTPResponse | None = None) -> HTTPResponse:
    """Perform a refusal of the upgrade request: log and count it as it says, and answer it
    (with `answer` when the refusal's own JSON is not what the client must hear)."""
    if refusal.log is not None:
        logger.log(refusal.log_level, "%s", refusal.log)
    if refusal.metric_reason is not None:
        metrics.handshake_refused(refusal.metric_reason)
    if refusal.close_connection:
        close_after_answer(request)
    if answer is not None:
        return answer
    return json({"error": refusal.reason}, status=refusal.status, headers=refusal.headers)


def _library_refusal(answer: Response, cause: Exception | None) -> Refusal:
    """The facts of the library's refusal, for `library_refusal` to answer."""
    return library_refusal(
        status=answer.status_code,
        body=answer.body.decode(errors="replace"),
        reason_phrase=answer.reason_phrase,
        refused_header=cause.name if isinstance(cause, InvalidHeader) else None,
        upgrade=answer.headers.get("Upgrade"),
    )


def _release(http: HttpProtocol, request: Request) -> None:
    """Make Sanic's HTTP protocol let go of the connection without closing it.

    Its connection task ends when the handler returns; with no transport its closing is a
    no-op that also cancels its timeout timer (left armed, it would keep the connection's
    objects alive for half a minute). Out of its connection set, the socket is no longer
    Sanic's to close at shutdown: `bifrost.blueprints.subscribe.close_subscriptions` closes
    it with 1012. Marked as upgraded (as a websocket's request is by its `Upgrade` header),
    the request is one whose handler answers nothing, so Sanic writes no error after it.
    """
    # Sanic's internals, pinned by tests/test_dependency_pins.py.
    http.connections.discard(http)
    http.transport = None
    stream = request.stream
    assert isinstance(stream, Http), "served by Sanic's HTTP/1.1 protocol"
    stream.upgrade_websocket = True
