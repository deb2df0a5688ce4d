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

__all__ = ["Connected", "JsonFrame"]

# A frame's JSON, and the positions it stands at (none for a reply without positions).
JsonFrame = tuple[bytes, Iterable[tuple[str, Position]]]


class Connected(Listener, Protocol):
    """A subscriber connected over either transport."""

    closed: bool
    liveness: Liveness

    @property
    def peer(self) -> str:
        """The client's IP address, for the log."""
        ...

    def send_json(self, frames: Iterable[JsonFrame]) -> None:
        """Send these frames' JSON, in order and in one write, unless the subscriber is
        closing; each frame's positions are where it stands, which an event stream's id takes
        in."""
        ...

    def close(self, close: Close) -> None:
        """End the connection for this reason: a websocket's close code, an event stream's end."""
        ...

    def ping(self, now: float) -> None:
        """Prove the connection still works: a websocket ping, an event stream's comment."""
        ...
