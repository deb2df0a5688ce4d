"""What the registry, the reaper, shutdown and recovery ask of a subscriber, whatever carries
it: a websocket (`bifrost.connection.Subscriber`) or an event stream
(`bifrost.event_stream.EventStream`). Both are one object per connection, the transport's
protocol, with no task of their own."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from bifrost.rules.liveness import Liveness
from bifrost.rules.positions import Position
from bifrost.rules.protocol import Close
from bifrost.rules.registry import Listener

__all__ = ["Connected"]


class Connected(Listener, Protocol):
    """A subscriber connected over either transport."""

    closed: bool
    liveness: Liveness

    @property
    def peer(self) -> str:
        """The client's IP address, for the log."""
        ...

    def send_json(self, body: bytes, positions: Iterable[tuple[str, Position]] = ()) -> None:
        """Send one frame's JSON, unless the subscriber is closing; `positions` are where the
        frame stands, which an event stream's id takes in."""
        ...

    def close(self, close: Close) -> None:
        """End the connection for this reason: a websocket's close code, an event stream's end."""
        ...

    def ping(self, now: float) -> None:
        """Prove the connection still works: a websocket ping, an event stream's comment."""
        ...
