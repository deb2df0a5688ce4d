"""One subscriber's socket, served by Bifröst itself once the handshake is done.

Sanic's own websocket keeps two tasks, a lock, a frame queue and several futures per socket,
and hands every chunk a client sends to a task of its own with no back-pressure: a socket
cost about 25 KiB, and a client writing frames faster than its handler read them grew that
queue without bound before any rate limit could see them. Here a socket is one object: the
`websockets` library's sans-I/O parser fed straight from the transport, every frame handed
the moment it is parsed to `bifrost.rules.protocol.ClientFrames`, which counts it against the
socket's budget and says what it comes to, and replies written synchronously.

Frames go out whole with one synchronous `transport.write`, which cannot interleave with
another frame. The transport's high-water mark is the slow-consumer bound: the write that
takes a socket's unsent bytes over it makes the transport call `pause_writing`, which closes
the socket instead of buffering without end, so the fan-out checks nothing per socket.
Frames the fan-out gathered for the socket in this loop turn (`bifrost.rules.registry`) are
written before anything the socket writes itself: replies, pings, pongs and its close.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Iterable
from time import monotonic
from typing import Protocol, cast

from websockets.frames import Frame
from websockets.protocol import State
from websockets.server import ServerProtocol

from bifrost.metrics import socket_closed_by_server
from bifrost.rules.event_ids import Cursor
from bifrost.rules.history import Entry
from bifrost.rules.liveness import Liveness
from bifrost.rules.protocol import RATE_LIMIT, SLOW_CONSUMER, ClientFrames, Close, text_frame
from bifrost.rules.registry import write_gathered
from bifrost.subscribers import JsonFrame

__all__ = ["CLOSE_HANDSHAKE_TIMEOUT", "SocketEvents", "Subscriber"]

logger = logging.getLogger("bifrost.connection")

# How long the peer of a socket closed by the server has to answer the close frame before
# the connection is dropped; until then the socket still counts as connected.
CLOSE_HANDSHAKE_TIMEOUT = 2.0

READ_SLICE_BYTES = 4096


class SocketEvents(Protocol):
    """What a socket reports to the code that gives its messages a meaning."""

    def message_received(self, subscriber: Subscriber, message: str) -> None:
        """A whole text message arrived (binary messages close the socket with 1003)."""

    def closing(self, subscriber: Subscriber) -> None:
        """The socket starts closing: it must hear no more broadcasts."""

    def disconnected(self, subscriber: Subscriber) -> None:
        """The connection is gone; forget the subscriber."""


class Subscriber(asyncio.Protocol):
    """A connected websocket client: the transport's protocol, and what the registry holds."""

    __slots__ = (
        "_events",
        "_frames",
        "_max_pending",
        "_transport",
        "_ws",
        "channels",
        "closed",
        "gathered",
        "held",
        "liveness",
        "positioned",
        "write",
    )
    # Declared on the class, as `Listener` declares it, for the registry to take a Subscriber.
    write: Callable[[bytes], object]
    # A websocket's frames carry their positions themselves: it has no event stream's cursor.
    cursor: Cursor | None = None

    def __init__(
        self,
        transport: asyncio.Transport,
        ws: ServerProtocol,
        events: SocketEvents,
        *,
        max_pending_bytes: int,
        max_frames_per_second: float,
        now: float,
    ) -> None:
        self._transport = transport
        self._ws = ws
        self._events = events
        # The registry's fan-out calls this for every broadcast: one bound method, made once.
        self.write = transport.write
        self._max_pending = max_pending_bytes
        self._frames = ClientFrames(max_frames_per_second, now)
        self.channels: set[str] = set()
        self.liveness = Liveness(connected_at=now, last_heard=now)
        self.closed = False
        # Set by the subscribe blueprint for a socket that sent `since` while history is on:
        # its frames carry positions, and while it recovers its messages are held.
        self.positioned = False
        self.held: list[Entry] | None = None
        self.gathered: list[bytes] | None = None

    @property
    def peer(self) -> str:
        """The client's IP address, for the log."""
        peername = self._transport.get_extra_info("peername")
        return str(peername[0]) if peername else "unknown"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The transport is ours now: its high-water mark becomes the slow-consumer bound."""
        self._transport.set_write_buffer_limits(high=self._max_pending)

    # Writing

    def send(self, frame: bytes) -> None:
        """Write a ready frame, unless the socket is closing."""
        if not self.closed:
            write_gathered(self)
            self.write(frame)

    def send_json(self, frames: Iterable[JsonFrame]) -> None:
        """Write each frame's JSON as a text frame, all in one write, unless the socket is
        closing; their positions are in the JSON already."""
        if not self.closed:
            write_gathered(self)
            self.write(b"".join(text_frame(body) for body, _ in frames))

    def pause_writing(self) -> None:
        """The transport's unsent bytes passed the bound: a client that reads this slowly is
        closed rather than buffered for without end."""
        pending = self._transport.get_write_buffer_size()
        logger.info("closing slow consumer of %s: %d bytes unsent", self.peer, pending)
        self.close(SLOW_CONSUMER)

    def close(self, close: Close) -> None:
        """Start the closing handshake now; abort the connection if the peer never answers.

        Reading goes on until the peer's close frame arrives: closing a socket with unread
        input makes the kernel send a reset, and the client would lose the close frame and
        see 1006 instead of the code and reason meant for it.
        """
        if self.closed:
            return
        self._closing()
        if self._ws.state is not State.OPEN:
            return
        self._ws.send_close(close.code, close.reason)
        self._flush()
        socket_closed_by_server(close)

    def _closing(self) -> None:
        """Send nothing more; drop the connection if it is still there when the closing
        handshake's time is up, whoever began it: a peer that stops reading would otherwise
        hold it for ever, its last bytes unsent (aborting a connection already gone is a no-op).
        """
        if self.closed:
            return
        self.closed = True
        self._events.closing(self)
        asyncio.get_running_loop().call_later(CLOSE_HANDSHAKE_TIMEOUT, self._transport.abort)

    def ping(self, now: float) -> None:
        """Send a protocol ping; its pong, like any frame, counts as hearing from the peer."""
        if self.closed:
            return
        self._ws.send_ping(secrets.token_bytes(4))
        self._flush()
        self.liveness.last_pinged = now

    def _flush(self) -> None:
        """Write what the parser has to say (pongs, close frames); an empty chunk ends the TCP
        connection, which the server closes first once the closing handshake is done; the
        frames gathered in this turn go first."""
        chunks = self._ws.data_to_send()
        if not chunks:
            return
        closed_before = self.closed
        write_gathered(self)
        for data in chunks:
            if self._transport.is_closing() or self.closed != closed_before:
                # A write here went over the bound and closed the socket, close frame and all:
                # nothing said before that may follow it.
                return
            if data:
                self._transport.write(data)
            else:
                self._transport.close()

    # Reading: asyncio.Protocol callbacks

    def data_received(self, data: bytes) -> None:
        if len(data) <= READ_SLICE_BYTES:
            self._receive(data)
            return
        # A read can hold thousands of frames; parsed a slice at a time, a flooding client
        # is stopped after its first slice over budget, not after all it managed to write.
        for start in range(0, len(data), READ_SLICE_BYTES):
            if not self._transport.is_reading():
                return
            self._receive(data[start : start + READ_SLICE_BYTES])

    def _receive(self, data: bytes) -> None:
        ws = self._ws
        ws.receive_data(data)
        # Opened in State.OPEN, the parser never yields a handshake Request or Response.
        frames = cast("list[Frame]", ws.events_received())
        now = monotonic()
        for frame in frames:
            if self.closed:
                break  # after our close frame, only the peer's answer matters to the parser
            self.liveness.heard(now)
            received = self._frames.received(frame, now)
            if received is None:
                continue
            if isinstance(received, str):
                self._events.message_received(self, received)
                continue
            logger.info("closing socket of %s: %s", self.peer, received.reason)
            self.close(received)
            if received is RATE_LIMIT:
                # A flooding client is read no further: it costs one slice, not all it writes.
                self._transport.pause_reading()
            break
        if ws.state is not State.OPEN:
            self._closing()  # the parser closed it: the peer's close, or a protocol error
        self._flush()

    def eof_received(self) -> bool:
        self._ws.receive_eof()
        self._closing()
        self._flush()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gathered = None
        self._events.disconnected(self)
