"""Which sockets listen to which channels, and the fan-out of a message to them.

No Sanic and no asyncio here: the registry only needs listeners that take bytes, so that its
bookkeeping (first subscriber of a channel, last one leaving, one delivery per socket) is
unit-tested with plain objects.

The fan-out is the hot path: one broadcast to 2,000 sockets is 2,000 iterations of it. The
message's websocket frame is therefore built here, once, next to the loop (the brokers carry
the message's JSON and never see a frame), each channel maps its sockets straight to their
transports' `write`, and a socket that starts closing leaves its channels at once, so that
the loop checks nothing per socket: every socket still in a channel is open and takes the
frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from bifrost.rules.protocol import text_frame

__all__ = ["ChannelRegistry", "Listener", "Totals"]


@dataclass(frozen=True, slots=True)
class Totals:
    """Connections, deliveries, channels and subscriptions: of one process, or summed over
    every process a broker reaches (what `/info.json` answers)."""

    connected: int
    deliveries: int
    channels: int
    subscriptions: int


class Listener(Protocol):
    """A socket as the registry sees it."""

    channels: set[str]
    # Hands a ready frame to the socket's transport as is, without waiting: the registry
    # calls it only while the socket is open (it leaves its channels when it starts closing).
    write: Callable[[bytes], object]


L = TypeVar("L", bound=Listener)


class ChannelRegistry(Generic[L]):
    """The sockets of one process and their channels."""

    def __init__(self) -> None:
        self._listeners: set[L] = set()
        self._channels: dict[str, dict[L, Callable[[bytes], object]]] = {}
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

    def figures(self) -> Totals:
        """This process's own figures, which a broker adds to those of the others."""
        return Totals(
            connected=len(self._listeners),
            deliveries=self.deliveries,
            channels=len(self._channels),
            subscriptions=self.subscription_count,
        )

    def listeners(self) -> list[L]:
        """A snapshot of every socket, safe to walk while sockets come and go."""
        return list(self._listeners)

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
                members = self._channels[channel] = {}
                occupied.append(channel)
            members[listener] = listener.write
        return occupied

    def withdraw(self, listener: L) -> list[str]:
        """Take a closing socket out of its channels, still counted as connected until it is
        gone; return the channels it leaves without any local subscriber."""
        vacated = []
        for channel in listener.channels:
            members = self._channels.get(channel)
            if members is None:
                continue
            members.pop(listener, None)
            if not members:
                del self._channels[channel]
                vacated.append(channel)
        listener.channels.clear()
        return vacated

    def disconnect(self, listener: L) -> list[str]:
        """Forget a socket; return the channels it leaves without any local subscriber."""
        self._listeners.discard(listener)
        return self.withdraw(listener)

    def deliver(self, channels: Sequence[str], payload: bytes) -> int:
        """Hand a message's JSON to every socket of the channels, once per socket, as one
        text frame built once for all of them; return how many sockets took it.

        The loop walks a copy: a write that takes a socket over its backlog bound closes it,
        and a closing socket leaves its channels there and then.
        """
        frame = text_frame(payload)
        if len(channels) == 1:
            members = self._channels.get(channels[0])
            writes = list(members.values()) if members else []
        else:
            merged: dict[L, Callable[[bytes], object]] = {}
            for channel in channels:
                merged.update(self._channels.get(channel, {}))
            writes = list(merged.values())
        for write in writes:
            write(frame)
        self.deliveries += len(writes)
        return len(writes)
