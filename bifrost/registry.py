"""Which sockets listen to which channels, and the fan-out of one frame to them.

No Sanic and no asyncio here: the registry only needs listeners that take bytes, so that its
bookkeeping (first subscriber of a channel, last one leaving, one delivery per socket) is
unit-tested with plain objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Generic, Protocol, TypeVar

__all__ = ["ChannelRegistry", "Listener"]


class Listener(Protocol):
    """A socket as the registry sees it."""

    channels: set[str]

    def send(self, frame: bytes) -> bool:
        """Hand a ready frame to the socket; False when it could not take it."""
        ...


L = TypeVar("L", bound=Listener)


class ChannelRegistry(Generic[L]):
    """The sockets of one process and their channels."""

    def __init__(self) -> None:
        self._listeners: set[L] = set()
        self._channels: dict[str, set[L]] = {}
        self.deliveries = 0

    @property
    def connected(self) -> int:
        """Open websocket connections in this process."""
        return len(self._listeners)

    @property
    def channel_count(self) -> int:
        """Channels with at least one local subscriber."""
        return len(self._channels)

    @property
    def subscription_count(self) -> int:
        """Socket-channel pairs."""
        return sum(len(listeners) for listeners in self._channels.values())

    def listeners(self) -> list[L]:
        """A snapshot of every socket, safe to walk while sockets come and go."""
        return list(self._listeners)

    def occupied_channels(self) -> list[str]:
        """Every channel some local socket listens to."""
        return list(self._channels)

    def is_occupied(self, channel: str) -> bool:
        """Whether some local socket listens to the channel."""
        return channel in self._channels

    def connect(self, listener: L) -> None:
        """Count a new socket, before it has any channel."""
        self._listeners.add(listener)

    def subscribe(self, listener: L, channels: Iterable[str]) -> list[str]:
        """Add channels to a socket; return those that had no local subscriber until now."""
        occupied = []
        for channel in channels:
            if channel in listener.channels:
                continue
            listener.channels.add(channel)
            members = self._channels.get(channel)
            if members is None:
                members = self._channels[channel] = set()
                occupied.append(channel)
            members.add(listener)
        return occupied

    def disconnect(self, listener: L) -> list[str]:
        """Forget a socket; return the channels it leaves without any local subscriber."""
        self._listeners.discard(listener)
        vacated = []
        for channel in listener.channels:
            members = self._channels.get(channel)
            if members is None:
                continue
            members.discard(listener)
            if not members:
                del self._channels[channel]
                vacated.append(channel)
        listener.channels.clear()
        return vacated

    def deliver(self, channels: Sequence[str], frame: bytes) -> int:
        """Hand one frame to every socket of the channels, once per socket; return how many."""
        if len(channels) == 1:
            targets: Iterable[L] = self._channels.get(channels[0], ())
        else:
            targets = set().union(*(self._channels.get(c, ()) for c in channels))
        delivered = 0
        for listener in targets:
            if listener.send(frame):
                delivered += 1
        self.deliveries += delivered
        return delivered
