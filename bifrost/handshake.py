"""The websocket handshake, answered by the `websockets` library, and the hand-over from Sanic.

Sanic parses the upgrade request and runs the middleware (origin and capacity checks); the
library validates the request and writes the 101 answer; the connection is then taken from
Sanic's HTTP protocol and given to the protocol object that serves the socket from then on
(`bifrost.connection.Subscriber`). Sanic's own websocket machinery is never started, so a
socket costs one object and no task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from sanic import Request
from sanic.response import HTTPResponse, json
from sanic.server import HttpProtocol
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeader
from websockets.http11 import Request as UpgradeRequest
from websockets.http11 import Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from bifrost.rules.text import printable

__all__ = ["SocketFactory", "upgrade"]

SocketFactory = Callable[[asyncio.Transport, ServerProtocol], asyncio.Protocol]

# The request headers the library reads to accept a handshake. Only these are handed to it:
# it refuses any value Sanic takes (a cookie in UTF-8 beyond Latin-1, control characters),
# and a header the handshake does not read must not make it fail.
HANDSHAKE_HEADERS = frozenset(
    {
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "origin",
    }
)
# The one version of the protocol spoken here: RFC 6455's.
WEBSOCKET_VERSION = "13"


def upgrade(request: Request, serve: SocketFactory, max_frame_bytes: int) -> HTTPResponse | None:
    """Switch the request's connection to a websocket served by `serve(transport, parser)`.

    Returns the JSON error to answer when the request is no valid websocket upgrade, or None
    once the 101 is written and the connection belongs to the new protocol.
    """
    if request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers:
        # Its body would be read as frames, or Sanic would try to read it after the hand-over.
        return json({"error": "A websocket upgrade request has no body"}, status=400)
    # Sanic types it as any transport; over HTTP/1.1 it is the event loop's TCP transport.
    transport = cast(asyncio.Transport, request.transport)
    if transport.get_write_buffer_size():
        # Earlier answers on this connection are still unsent: a client that pipelined
        # requests and never read them. Taken over now, the socket would start with Sanic's
        # paused writing, and its slow-consumer bound would never fire.
        return json({"error": "A websocket upgrade must not follow unread answers"}, status=400)
    # Made open: Sanic has read the request already, so the parser starts at the first frame.
    ws = ServerProtocol(max_size=max_frame_bytes, state=State.OPEN)
    try:
        read = [(k, v) for k, v in request.headers.items() if k.lower() in HANDSHAKE_HEADERS]
        headers = Headers(read)
    except InvalidHeader as refused:
        reason = printable(f"Failed to open a WebSocket connection: {refused}")
        return json({"error": reason}, status=400)
    answer = ws.accept(UpgradeRequest(path=request.path, headers=headers))
    if answer.status_code != 101:
        return _refusal(answer, ws.handshake_exc)
    http = transport.get_protocol()
    assert isinstance(http, HttpProtocol), "served by Sanic's HTTP/1.1 protocol"
    # Sanic's own buffer of bytes read and not parsed: frames sent right behind the request.
    unread = bytes(http.recv_buffer)
    _release(http)
    transport.write(answer.serialize())
    protocol = serve(transport, ws)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    transport.resume_reading()
    if unread:
        protocol.data_received(unread)
    return None


def _refusal(answer: Response, cause: Exception | None) -> HTTPResponse:
    """The library's refusal of a handshake as a JSON error, with the headers that say how to
    retry: `Upgrade: websocket` with its 426 for a request that is no upgrade.

    A version other than 13, or none, the library refuses with a plain 400 that names no
    version; RFC 6455 §4.2.2 wants the versions spoken said in `Sec-WebSocket-Version`, and
    426 Upgrade Required tells the client that this version of the protocol would succeed.
    """
    # The library's reason quotes the header it refuses, as the client sent it.
    reason = printable(answer.body.decode(errors="replace").strip() or answer.reason_phrase)
    if isinstance(cause, InvalidHeader) and cause.name == "Sec-WebSocket-Version":
        headers = {"upgrade": "websocket", "sec-websocket-version": WEBSOCKET_VERSION}
        return json({"error": reason}, status=426, headers=headers)
    said = {k: v for k, v in answer.headers.raw_items() if k.lower() == "upgrade"}
    return json({"error": reason}, status=answer.status_code, headers=said)


def _release(http: HttpProtocol) -> None:
    """Make Sanic's HTTP protocol let go of the connection without closing it.

    Its connection task ends when the handler returns; with no transport its closing is a
    no-op that also cancels its timeout timer (left armed, it would keep the connection's
    objects alive for half a minute). Out of its connection set, the socket is no longer
    Sanic's to close at shutdown: `bifrost.app.close_service` closes it with 1012.
    """
    # Sanic's internals, pinned by tests/test_dependency_pins.py.
    http.connections.discard(http)
    http.transport = None
