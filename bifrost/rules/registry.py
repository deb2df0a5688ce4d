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

A positioned socket (one that sent `since`, history on) takes frames that also carry the
message's positions in its own channels. Those sockets are kept apart, so that a broadcast to
channels without any costs nothing more; for the others, the frame is built once for each set
of the message's channels that its recipients hear, not once per socket. While a positioned
socket recovers, the messages it is handed are held for it (`held`) rather than written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from bifrost.rules.history import Entry, positioned_message
from bifrost.rules.positions import MessagePositions
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
    # Whether its frames carry positions.
    positioned: bool
    # While it recovers, the positioned messages handed to it meanwhile, else None.
    held: list[Entry] | None


L = TypeVar("L", bound=Listener)


class ChannelRegistry(Generic[L]):
    """The sockets of one process and their channels."""

    def __init__(self) -> None:
        self._listeners: set[L] = set()
        self._channels: dict[str, dict[L, Callable[[bytes], object]]] = {}
        self._positioned: dict[str, dict[L, None]] = {}
        self.deliveries = 0

    @property
    def connected(self) -> int:
        """Open websocket connections in this process."""
        return len(self._listeners)

    @property
    def channel_count(self) -> int:
        """Channels with at least one local subscriber."""
        if not self._positioned:
            return len(self._channels)
        return len(self._channels.keys() | self._positioned.keys())

    @property
    def subscription_count(self) -> int:
        """Socket-channel pairs."""
        return sum(len(listeners) for listeners in self._channels.values()) + sum(
            len(listeners) for listeners in self._positioned.values()
        )

    def figures(self) -> Totals:
        """This process's own figures, which a broker adds to those of the others."""
        return Totals(
            connected=len(self._listeners),
            deliveries=self.deliveries,
            channels=self.channel_count,
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
            if not self._occupied(channel):
                occupied.append(channel)
            self._join(listener, channel)
        return occupied

    def position(self, listener: L) -> None:
        """A socket's frames carry positions from now on, in the channels it hears already too."""
        if listener.positioned:
            return
        for channel in listener.channels:
            self._leave(listener, channel)
        listener.positioned = True
        for channel in listener.channels:
            self._join(listener, channel)

    def _occupied(self, channel: str) -> bool:
        return channel in self._channels or channel in self._positioned

    def _join(self, listener: L, channel: str) -> None:
        if listener.positioned:
            self._positioned.setdefault(channel, {})[listener] = None
        else:
            self._channels.setdefault(channel, {})[listener] = listener.write

    def _leave(self, listener: L, channel: str) -> None:
        members = (self._positioned if listener.positioned else self._channels).get(channel)
        if members is None:
            return
        members.pop(listener, None)
        if not members:
            del (self._positioned if listener.positioned else self._channels)[channel]

    def withdraw(self, listener: L) -> list[str]:
        """Take a closing socket out of its channels, still counted as connected until it is
        gone; return the channels it leaves without any local subscriber."""
        vacated = []
        for channel in listener.channels:
            self._leave(listener, channel)
            if not self._occupied(channel):
                vacated.append(channel)
        listener.channels.clear()
        return vacated

    def disconnect(self, listener: L) -> list[str]:
        """Forget a socket; return the channels it leaves without any local subscriber."""
        self._listeners.discard(listener)
        return self.withdraw(listener)

    def deliver(
        self, channels: Sequence[str], payload: bytes, positions: MessagePositions | None = None
    ) -> int:
        """Hand a message's JSON to every socket of the channels, once per socket, as one
        text frame built once for all of them; return how many sockets took it. With the
        message's `positions` (history on), positioned sockets get them too.

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
        delivered = len(writes)
        if positions is not None and self._positioned:
            delivered += self._deliver_positioned(channels, payload, positions)
        self.deliveries += delivered
        return delivered

    def _deliver_positioned(
        self, channels: Sequence[str], payload: bytes, positions: MessagePositions
    ) -> int:
        """The positioned sockets' share: one frame for each set of the message's channels
        its recipients hear, since each names the positions of its own channels only."""
        entry = Entry(payload, positions)
        if len(channels) == 1:
            members = self._positioned.get(channels[0])
            if not members:
                return 0
            recipients = list(members)
            frame = positioned_message(payload, positions)
            for listener in recipients:
                if listener.held is None:
                    listener.write(frame)
                else:
                    listener.held.append(entry)
            return len(recipients)
        merged: dict[L, None] = {}
        for channel in channels:
            merged.update(self._positioned.get(channel, {}))
        frames: dict[tuple[str, ...], bytes] = {}
        for listener in merged:
            if listener.held is not None:
                listener.held.append(entry)
                continue
            heard = tuple(c for c in channels if c in listener.channels)
            own_frame = frames.get(heard)
            if own_frame is None:
                own = [(c, p) for c, p in positions if c in listener.channels]
                own_frame = frames[heard] = positioned_message(payload, own)
            listener.write(own_frame)
        return len(merged)
