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

A listener is a websocket or an event stream (`cursor` set), and the two are kept apart, so
that a broadcast to channels without any event stream costs the websockets nothing more; an
event stream of a process without history takes the message as one event, built once for
all of them like the frame.

A positioned listener (a websocket that sent `since`, or any event stream, history on) takes
the message with its positions in the listener's own channels. Those listeners are kept apart
too, so that a broadcast to channels without any costs nothing more; for the others, the JSON
with positions is built once for each set of the message's channels that its recipients hear,
framed once per set for websockets, and made into an event once per set and stream position
for event streams, whose `id:` names every position of the stream: streams at the same
positions share one encoding. While a positioned listener recovers, the messages it is handed
are held for it (`held`) rather than written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from bifrost.rules.event_ids import Cursor, IdLayout
from bifrost.rules.event_stream import event, id_event
from bifrost.rules.history import Entry, positioned_json
from bifrost.rules.positions import MessagePositions, Position
from bifrost.rules.protocol import text_frame

__all__ = ["ChannelRegistry", "Listener", "Totals"]


@dataclass(frozen=True, slots=True)
class Totals:
    """Connections, deliveries, channels and subscriptions: of one process, or summed over
    every process a broker reaches (what `/info.json` answers). `connected` counts websockets
    and event streams alike; `event_streams` says how many of them are event streams."""

    connected: int
    deliveries: int
    channels: int
    subscriptions: int
    event_streams: int = 0


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
    # An event stream's positions and id, which its positioned events move on; None for a
    # websocket.
    cursor: Cursor | None


L = TypeVar("L", bound=Listener)


class ChannelRegistry(Generic[L]):
    """The sockets of one process and their channels."""

    def __init__(self) -> None:
        self._listeners: set[L] = set()
        # Per channel, its listeners and their writes: websockets, event streams, and the
        # positioned listeners of either kind.
        self._channels: dict[str, dict[L, Callable[[bytes], object]]] = {}
        self._streams: dict[str, dict[L, Callable[[bytes], object]]] = {}
        self._positioned: dict[str, dict[L, Callable[[bytes], object]]] = {}
        self._event_streams = 0
        self.deliveries = 0

    @property
    def connected(self) -> int:
        """Open connections in this process, websockets and event streams."""
        return len(self._listeners)

    @property
    def event_streams(self) -> int:
        """Open event streams in this process."""
        return self._event_streams

    @property
    def channel_count(self) -> int:
        """Channels with at least one local subscriber."""
        if not self._positioned and not self._streams:
            return len(self._channels)
        return len(self._channels.keys() | self._streams.keys() | self._positioned.keys())

    @property
    def subscription_count(self) -> int:
        """Listener-channel pairs."""
        return sum(
            len(listeners)
            for group in (self._channels, self._streams, self._positioned)
            for listeners in group.values()
        )

    def figures(self) -> Totals:
        """This process's own figures, which a broker adds to those of the others."""
        return Totals(
            connected=len(self._listeners),
            deliveries=self.deliveries,
            channels=self.channel_count,
            subscriptions=self.subscription_count,
            event_streams=self._event_streams,
        )

    def listeners(self) -> list[L]:
        """A snapshot of every socket, safe to walk while sockets come and go."""
        return list(self._listeners)

    def connect(self, listener: L) -> None:
        """Count a new socket, before it has any channel."""
        if listener not in self._listeners and listener.cursor is not None:
            self._event_streams += 1
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
        return channel in self._channels or channel in self._streams or channel in self._positioned

    def _group(self, listener: L) -> dict[str, dict[L, Callable[[bytes], object]]]:
        if listener.positioned:
            return self._positioned
        return self._channels if listener.cursor is None else self._streams

    def _join(self, listener: L, channel: str) -> None:
        self._group(listener).setdefault(channel, {})[listener] = listener.write

    def _leave(self, listener: L, channel: str) -> None:
        group = self._group(listener)
        members = group.get(channel)
        if members is None:
            return
        members.pop(listener, None)
        if not members:
            del group[channel]

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
        if listener in self._listeners:
            self._listeners.discard(listener)
            if listener.cursor is not None:
                self._event_streams -= 1
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
        if self._streams:
            delivered += self._deliver_to_streams(channels, payload)
        if positions is not None and self._positioned:
            delivered += self._deliver_positioned(channels, payload, positions)
        self.deliveries += delivered
        return delivered

    def _deliver_to_streams(self, channels: Sequence[str], payload: bytes) -> int:
        """The event streams' share, history off: one event for all of them, with no `id:`,
        since theirs never changes (every channel at a position not known)."""
        if len(channels) == 1:
            members = self._streams.get(channels[0])
            writes = list(members.values()) if members else []
        else:
            merged: dict[L, Callable[[bytes], object]] = {}
            for channel in channels:
                merged.update(self._streams.get(channel, {}))
            writes = list(merged.values())
        if writes:
            data = event(payload)
            for write in writes:
                write(data)
        return len(writes)

    def _deliver_positioned(
        self, channels: Sequence[str], payload: bytes, positions: MessagePositions
    ) -> int:
        """The positioned sockets' share: the JSON with positions once for each set of the
        message's channels its recipients hear, since each names the positions of its own
        channels only; framed once per set, and an event once per set and stream position."""
        entry = Entry(payload, positions)
        if len(channels) == 1:
            members = self._positioned.get(channels[0])
            if not members:
                return 0
            recipients = list(members)
            body = positioned_json(payload, positions)
            frame = b""
            events: dict[tuple[IdLayout, str], tuple[bytes, Cursor]] = {}
            for listener in recipients:
                if listener.held is not None:
                    listener.held.append(entry)
                    continue
                cursor = listener.cursor
                if cursor is None:
                    frame = frame or text_frame(body)
                    listener.write(frame)
                    continue
                made = events.get((cursor.layout, cursor.id))
                if made is None:
                    after = cursor.advanced(positions)
                    made = events[cursor.layout, cursor.id] = (id_event(body, after.id), after)
                listener.cursor = made[1]
                listener.write(made[0])
            return len(recipients)
        merged: dict[L, object] = {}
        for channel in channels:
            merged.update(self._positioned.get(channel, {}))
        bodies: dict[tuple[str, ...], tuple[bytes, list[tuple[str, Position]]]] = {}
        frames: dict[tuple[str, ...], bytes] = {}
        stream_events: dict[tuple[tuple[str, ...], IdLayout, str], tuple[bytes, Cursor]] = {}
        for listener in merged:
            if listener.held is not None:
                listener.held.append(entry)
                continue
            heard = tuple(c for c in channels if c in listener.channels)
            own_body = bodies.get(heard)
            if own_body is None:
                own = [(c, p) for c, p in positions if c in listener.channels]
                own_body = bodies[heard] = (positioned_json(payload, own), own)
            cursor = listener.cursor
            if cursor is None:
                own_frame = frames.get(heard)
                if own_frame is None:
                    own_frame = frames[heard] = text_frame(own_body[0])
                listener.write(own_frame)
                continue
            key = (heard, cursor.layout, cursor.id)
            made = stream_events.get(key)
            if made is None:
                after = cursor.advanced(own_body[1])
                made = stream_events[key] = (id_event(own_body[0], after.id), after)
            listener.cursor = made[1]
            listener.write(made[0])
        return len(merged)
