"""One subscriber's event stream, served by Bifröst itself once the answer's head is written.

As with websockets (`bifrost.connection`), the connection is taken from Sanic after the head
of the 200 goes out (`bifrost.handshake.take_connection`), and the stream is one object, the
transport's protocol: no Sanic response object, task, lock or queue per stream. Events go out
whole with one synchronous `transport.write`, and the transport's high-water mark is the
slow-consumer bound: the write that takes a stream's unsent bytes over it makes the transport
call `pause_writing`, which ends the stream instead of buffering without end. Events the
fan-out gathered for the stream in this loop turn (`bifrost.rules.registry`) are written
before anything the stream writes itself.

The client says nothing after its request, so there is nothing to read but the end of the
connection; a peer that vanished without one shows as a failing write, at the latest when
the reaper's comment line goes out every `BIFROST_PING_INTERVAL`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from bifrost.connection import CLOSE_HANDSHAKE_TIMEOUT
from bifrost.metrics import socket_closed_by_server
from bifrost.rules.event_ids import Cursor
from bifrost.rules.event_stream import COMMENT, closing_comment, id_event
from bifrost.rules.history import Entry
from bifrost.rules.liveness import Liveness
from bifrost.rules.protocol import SLOW_CONSUMER, Close
from bifrost.rules.registry import write_gathered
from bifrost.subscribers import JsonFrame

__all__ = ["EventStream", "StreamEvents"]

logger = logging.getLogger("bifrost.event_stream")


class StreamEvents(Protocol):
    """What a stream reports to the code that subscribed it."""

    def closing(self, subscriber: EventStream) -> None:
        """The stream is ending: it must hear no more broadcasts."""

    def disconnected(self, subscriber: EventStream) -> None:
        """The connection is gone; forget the stream."""


class EventStream(asyncio.Protocol):
    """A connected event-stream client: the transport's protocol, and what the registry holds."""

    __slots__ = (
        "_events",
        "_max_pending",
        "_transport",
        "channels",
        "closed",
        "cursor",
        "gathered",
        "held",
        "liveness",
        "positioned",
        "write",
    )
    # Declared on the class, as `Listener` declares it, for the registry to take a stream.
    write: Callable[[bytes], object]
    # Never None for a stream; typed as `Listener` declares it, which websockets share.
    cursor: Cursor | None

    def __init__(
        self,
        transport: asyncio.Transport,
        events: StreamEvents,
        *,
        cursor: Cursor,
        max_pending_bytes: int,
        now: float,
    ) -> None:
        self._transport = transport
        self._events = events
        # The registry's fan-out calls this for every broadcast: one bound method, made once.
        self.write = transport.write
        self._max_pending = max_pending_bytes
        self.cursor = cursor
        self.channels: set[str] = set()
        # Its token was verified before the stream began, and its client never speaks.
        self.liveness = Liveness(connected_at=now, last_heard=now, authenticated=True, speaks=False)
        self.closed = False
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

    def send_json(self, frames: Iterable[JsonFrame]) -> None:
        """Write each frame's JSON as an event whose id takes in the frame's positions, all in
        one write."""
        if self.closed:
            return
        cursor = self.cursor
        assert cursor is not None, "a stream has a cursor from its start"
        events = []
        for body, positions in frames:
            if positions:
                cursor = self.cursor = cursor.advanced(positions)
            events.append(id_event(body, cursor.id))
        write_gathered(self)
        self.write(b"".join(events))

    def ping(self, now: float) -> None:
        """A comment line: the browser ignores it, and the write fails once the peer is gone."""
        if self.closed:
            return
        write_gathered(self)
        self.write(COMMENT)
        self.liveness.last_pinged = now

    def pause_writing(self) -> None:
        """The transport's unsent bytes passed the bound: a client that reads this slowly is
        cut off rather than buffered for without end."""
        pending = self._transport.get_write_buffer_size()
        logger.info("closing slow consumer of %s: %d bytes unsent", self.peer, pending)
        self.close(SLOW_CONSUMER)

    def close(self, close: Close) -> None:
        """End the stream: what is unsent goes out, then the connection closes, and the browser
        reconnects after the `retry:` the stream announced. A peer that does not read it within
        the closing handshake's time is dropped.

        The reason is said as a comment, but to a slow consumer, which would read it last.
        """
        if self.closed:
            return
        write_gathered(self)
        if self.closed:
            return  # the gathered events took it over the bound, which ended it
        self._closing()
        if close is not SLOW_CONSUMER:
            self._transport.write(closing_comment(close.reason))
        self._transport.close()
        socket_closed_by_server(close)

    def _closing(self) -> None:
        self.closed = True
        self._events.closing(self)
        asyncio.get_running_loop().call_later(CLOSE_HANDSHAKE_TIMEOUT, self._transport.abort)

    # Reading: asyncio.Protocol callbacks

    def data_received(self, data: bytes) -> None:
        """An EventSource sends nothing after its request: whatever comes is ignored."""

    def eof_received(self) -> bool:
        """The client closed its side: the stream ends, and the transport closes."""
        if not self.closed:
            self._closing()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gathered = None
        self._events.disconnected(self)
