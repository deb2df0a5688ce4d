"""One subscriber's socket: frames written straight to its transport, bounded, never awaited.

Sanic's `ws.send` awaits each socket's back-pressure under a lock, so a fan-out that used it
would wait on the slowest reader. Frames here are written whole with one synchronous
`transport.write`, which cannot interleave with another frame, and a socket whose unsent
bytes pass the bound is closed instead of buffering without end.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from time import monotonic

from sanic.server.websockets.impl import WebsocketImplProtocol
from websockets.protocol import State

from bifrost.liveness import Liveness
from bifrost.metrics import socket_closed_by_server
from bifrost.protocol import SLOW_CONSUMER, Close
from bifrost.ratelimit import FrameBudget

__all__ = ["CLOSE_HANDSHAKE_TIMEOUT", "Subscriber"]

logger = logging.getLogger("bifrost.connection")

# How long the peer of a socket closed by the server has to answer the close frame before
# the connection is dropped; until then the socket still counts as connected.
CLOSE_HANDSHAKE_TIMEOUT = 2.0


class Subscriber:
    """A connected websocket client, as the registry and the reaper handle it."""

    __slots__ = ("_max_pending", "_transport", "_ws", "budget", "channels", "closed", "liveness")

    def __init__(
        self,
        ws: WebsocketImplProtocol,
        *,
        max_pending_bytes: int,
        max_frames_per_second: float,
        now: float,
    ) -> None:
        self._ws = ws
        assert ws.io_proto is not None and ws.io_proto.transport is not None, "socket is open"
        self._transport: asyncio.Transport = ws.io_proto.transport
        self._max_pending = max_pending_bytes
        self.channels: set[str] = set()
        self.liveness = Liveness(connected_at=now, last_heard=now)
        self.budget = FrameBudget(max_frames_per_second, now)
        self.closed = False

    def send(self, frame: bytes) -> bool:
        """Write a ready frame; close the socket instead when its backlog is over the bound."""
        if self.closed or self._transport.is_closing():
            return False
        pending = self._transport.get_write_buffer_size()
        if pending + len(frame) > self._max_pending:
            logger.info("closing slow consumer: %d bytes unsent", pending)
            self.close(SLOW_CONSUMER)
            return False
        self._transport.write(frame)
        return True

    def close(self, close: Close) -> None:
        """Start the closing handshake now; abort the connection if the peer never answers.

        Reading goes on until the peer's close frame arrives: closing a socket with unread
        input makes the kernel send a reset, and the client would lose the close frame and
        see 1006 instead of the code and reason meant for it.
        """
        if self.closed:
            return
        self.closed = True
        protocol = self._ws.ws_proto
        if protocol.state is not State.OPEN:
            return
        protocol.send_close(close.code, close.reason)
        for data in protocol.data_to_send():
            self._transport.write(data)
        socket_closed_by_server(close)
        asyncio.get_running_loop().call_later(CLOSE_HANDSHAKE_TIMEOUT, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if self._ws.ws_proto.state is not State.CLOSED and not self._transport.is_closing():
            self._transport.abort()

    def ping(self, now: float) -> None:
        """Send a protocol ping; its pong, whenever it comes, counts as hearing from the peer."""
        if self.closed or self._transport.is_closing():
            return
        payload = secrets.token_bytes(4)
        while payload in self._ws.pings:
            payload = secrets.token_bytes(4)
        waiter = asyncio.get_running_loop().create_future()
        waiter.add_done_callback(self._pong_received)
        self._ws.pings[payload] = waiter
        self._ws.ws_proto.send_ping(payload)
        for data in self._ws.ws_proto.data_to_send():
            self._transport.write(data)
        self.liveness.last_pinged = now

    def _pong_received(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.cancelled() and waiter.exception() is None:
            self.liveness.heard(monotonic())
