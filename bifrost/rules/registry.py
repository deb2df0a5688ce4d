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

Frames of one loop turn go out in one write per socket: the first broadcast of a turn is
written at once, as above, and asks `defer` (the loop's `call_soon`) to end the turn; a
broadcast that follows in the same turn gathers its frame on each recipient (`gathered`)
instead, and the end of the turn writes each socket's gathered frames, in order, as one
write. A listener writes its gathered frames first (`write_gathered`) whenever it writes
anything itself, so that its own replies, pings and close never overtake them.
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

__all__ = ["ChannelRegistry", "Defer", "Listener", "Totals", "write_gathered"]

# Runs a callback once the loop turn that asks is over: the loop's `call_soon`.
Defer = Callable[[Callable[[], None]], object]


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
    # Closing or gone: frames gathered for it are no longer written by the registry.
    closed: bool
    # The frames of this loop turn not written yet, in order, else None.
    gathered: list[bytes] | None


def write_gathered(listener: Listener) -> None:
    """Write the frames gathered for a listener in this turn, before it writes anything itself."""
    frames = listener.gathered
    if frames is not None:
        listener.gathered = None
        listener.write(frames[0] if len(frames) == 1 else b"".join(frames))


L = TypeVar("L", bound=Listener)


class ChannelRegistry(Generic[L]):
    """The sockets of one process and their channels."""

    def __init__(self, defer: Defer | None = None) -> None:
        self._listeners: set[L] = set()
        # Per channel, its listeners and their writes: websockets, event streams, and the
        # positioned listeners of either kind.
        self._channels: dict[str, dict[L, Callable[[bytes], object]]] = {}
        self._streams: dict[str, dict[L, Callable[[bytes], object]]] = {}
        self._positioned: dict[str, dict[L, Callable[[bytes], object]]] = {}
        self._event_streams = 0
        self.deliveries = 0
        # Without `defer` every frame is written at once. With it, None until the turn's first
        # broadcast is written, then the listeners with frames gathered, until the turn ends.
        self._defer = defer
        self._gathering: list[L] | None = None

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
        delivered = self._hand(_members(self._channels, channels), text_frame(payload))
        if self._streams:
            delivered += self._deliver_to_streams(channels, payload)
        if positions is not None and self._positioned:
            delivered += self._deliver_positioned(channels, payload, positions)
        self.deliveries += delivered
        if self._gathering is None and self._defer is not None:
            self._gathering = []
            self._defer(self._end_turn)
        return delivered

    def _hand(self, members: dict[L, Callable[[bytes], object]], data: bytes) -> int:
        """Write `data` to each member now, or gather it when the turn has had a broadcast;
        return how many took it. The write walks a copy: a write can close its socket, which
        leaves its channels there and then."""
        if self._gathering is not None:
            return self._gather(list(members), data)
        writes = list(members.values())
        for write in writes:
            write(data)
        return len(writes)

    def _gather(self, listeners: list[L], data: bytes) -> int:
        """Keep a frame for each listener until the turn ends, after those gathered before."""
        gathering = self._gathering
        assert gathering is not None, "frames are gathered only after a turn's first broadcast"
        for listener in listeners:
            gathered = listener.gathered
            if gathered is None:
                listener.gathered = [data]
                gathering.append(listener)
            else:
                gathered.append(data)
        return len(listeners)

    def _send(self, listener: L, data: bytes) -> None:
        """Write a frame of the positioned share now, or gather it if the turn has others."""
        if self._gathering is None:
            listener.write(data)
        else:
            self._gather([listener], data)

    def _end_turn(self) -> None:
        """Write each listener's gathered frames as one write; those closed meanwhile wrote
        theirs before their close (`write_gathered`), or are gone."""
        gathering, self._gathering = self._gathering or [], None
        for listener in gathering:
            frames = listener.gathered
            if frames is None:
                continue
            listener.gathered = None
            if not listener.closed:
                listener.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def _deliver_to_streams(self, channels: Sequence[str], payload: bytes) -> int:
        """The event streams' share, history off: one event for all of them, with no `id:`,
        since theirs never changes (every channel at a position not known)."""
        members = _members(self._streams, channels)
        return self._hand(members, event(payload)) if members else 0

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
                    self._send(listener, frame)
                    continue
                made = events.get((cursor.layout, cursor.id))
                if made is None:
                    after = cursor.advanced(positions)
                    made = events[cursor.layout, cursor.id] = (id_event(body, after.id), after)
                listener.cursor = made[1]
                self._send(listener, made[0])
            return len(recipients)
        merged = _members(self._positioned, channels)
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
                self._send(listener, own_frame)
                continue
            key = (heard, cursor.layout, cursor.id)
            made = stream_events.get(key)
            if made is None:
                after = cursor.advanced(own_body[1])
                made = stream_events[key] = (id_event(own_body[0], after.id), after)
            listener.cursor = made[1]
            self._send(listener, made[0])
        return len(merged)


def _members(
    group: dict[str, dict[L, Callable[[bytes], object]]], channels: Sequence[str]
) -> dict[L, Callable[[bytes], object]]:
    """The listeners of a group that hear any of the channels, each once (for one channel,
    the group's own mapping, which the caller copies before writing)."""
    if len(channels) == 1:
        return group.get(channels[0]) or {}
    merged: dict[L, Callable[[bytes], object]] = {}
    for channel in channels:
        merged.update(group.get(channel, {}))
    return merged
