"""Positions and recovery: what a `since` says, what a positioned frame looks like, and which
kept messages a reconnecting socket gets.

No Sanic, no asyncio and no Redis here. The brokers keep the streams (`bifrost.rules.streams`
in-process, Redis Streams between nodes) and hand this module a snapshot of each channel: its
epoch, its top offset and the messages it still keeps after the socket's position. From that
alone it decides, per channel, whether the socket is `recovered`, and the order in which the
kept messages go out: each message once, even when it was broadcast to several of the socket's
channels, and in the order of every one of them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import orjson

from bifrost.rules.positions import MessagePositions, Position

__all__ = [
    "ChannelSnapshot",
    "Entry",
    "Recovery",
    "plan_recovery",
    "positioned_json",
    "positioned_subscribed_json",
    "positions_json",
    "unpositioned_subscribed_json",
]


@dataclass(frozen=True, slots=True)
class Entry:
    """A message with positions: its JSON as sent, and where it stands in each of its channels."""

    payload: bytes
    positions: MessagePositions


@dataclass(frozen=True, slots=True)
class ChannelSnapshot:
    """A channel's stream at one instant: its epoch, its top offset (0 before any message), and
    the kept messages after the position asked for, oldest first (empty when none was asked)."""

    epoch: str
    top: int
    entries: Sequence[Entry] = ()


@dataclass(frozen=True, slots=True)
class Recovery:
    """What a positioned socket is told for the new channels of one authenticate.

    `starts` is where each channel continues (the `subscribed` frames' positions), `recovered`
    says, for each channel `since` named, whether nothing was missed, and `kept` holds, for
    each recovered channel, the kept messages it missed, oldest first.
    """

    starts: dict[str, Position]
    recovered: dict[str, bool]
    kept: dict[str, Sequence[Entry]]

    def messages(self, held: Sequence[Entry], channels: Collection[str]) -> list[Entry]:
        """The messages that follow the `subscribed` frames, given the live messages held back
        meanwhile and every channel the socket now hears; each with the positions its frame
        names.

        The held messages are those this process handed the socket since it began to hear the
        new channels, in the order they were published, but not every one of a new channel:
        through Redis, a node not yet subscribed to it still hears a message sent to it and to
        a channel the node hears already, not one sent to it alone. So each channel's messages
        are lined up on their own (a new channel's kept ones, then its held ones published
        after the snapshot; a channel heard already, its held ones) and merged: each message
        once, in the order of every channel, naming only the positions the client has not
        reached, so that a channel's offset never goes back.
        """
        kept = {entry.positions for entries in self.kept.values() for entry in entries}
        lines = {channel: list(entries) for channel, entries in self.kept.items()}
        for entry in held:
            for channel, position in entry.positions:
                if channel not in channels:
                    continue
                if channel not in self.starts or (
                    entry.positions not in kept and self._after_start(channel, position)
                ):
                    lines.setdefault(channel, []).append(entry)
        return [
            Entry(entry.payload, tuple((c, p) for c, p in entry.positions if c in own))
            for entry, own in _merge(lines)
        ]

    def _after_start(self, channel: str, position: Position) -> bool:
        start = self.starts.get(channel)
        if start is None:
            return False
        return position.epoch != start.epoch or position.offset > start.offset


def plan_recovery(
    channels: Sequence[str],
    since: Mapping[str, Position],
    snapshots: Mapping[str, ChannelSnapshot],
    budget: int,
    byte_budget: int,
) -> Recovery:
    """Decide, from snapshots taken after the socket hears the channels live, what it is told.

    A channel `since` names is recovered when the snapshot has the same epoch and keeps every
    message after the position; all or nothing, so a channel missing even one is `recovered:
    false` with no old message. `budget` bounds the messages one authenticate recovers in all,
    and `byte_budget` their JSON, so that a recovery never takes a socket over its backlog
    bound (it would be closed as a slow consumer, reconnect and try again for ever): channels
    past either, in the token's order, are not recovered.
    """
    starts: dict[str, Position] = {}
    recovered: dict[str, bool] = {}
    wanted: dict[str, Sequence[Entry]] = {}
    for channel in channels:
        snapshot = snapshots[channel]
        top = Position(snapshot.epoch, snapshot.top)
        asked = since.get(channel)
        if asked is None:
            starts[channel] = top
            continue
        missed = _missed(asked, snapshot)
        size = sum(len(entry.payload) for entry in missed or ())
        if missed is None or len(missed) > budget or size > byte_budget:
            starts[channel] = top
            recovered[channel] = False
            continue
        budget -= len(missed)
        byte_budget -= size
        starts[channel] = asked
        recovered[channel] = True
        if missed:
            wanted[channel] = missed
    return Recovery(starts, recovered, wanted)


def _missed(asked: Position, snapshot: ChannelSnapshot) -> Sequence[Entry] | None:
    """The kept messages after `asked`, when they are every message after it; else None."""
    if asked.epoch != snapshot.epoch or asked.offset > snapshot.top:
        return None
    entries = snapshot.entries
    if len(entries) != snapshot.top - asked.offset:
        return None  # some were evicted by size, or the stream lost them
    return entries


def _merge(lines: Mapping[str, Sequence[Entry]]) -> list[tuple[Entry, list[str]]]:
    """The messages of several channels' lines as one sequence, each once, with the channels
    whose lines hold it, in the order of every line.

    Each line is in the order its messages were published, and a broadcast is given its
    offsets in all its channels in one atomic step: of the lines' first messages, the earliest
    published is first in every line that holds it, so there is always one to go next.
    """
    queues = {channel: deque(entries) for channel, entries in lines.items() if entries}
    holders: dict[MessagePositions, list[str]] = {}
    for channel, queue in queues.items():
        for entry in queue:
            holders.setdefault(entry.positions, []).append(channel)
    merged: list[tuple[Entry, list[str]]] = []
    while queues:
        entry = next(
            queue[0]
            for queue in queues.values()
            if all(
                queues[c][0].positions == queue[0].positions for c in holders[queue[0].positions]
            )
        )
        own = holders[entry.positions]
        merged.append((entry, own))
        for channel in own:
            queue = queues[channel]
            queue.popleft()
            if not queue:
                del queues[channel]
    return merged


def positions_json(positions: Iterable[tuple[str, Position]]) -> bytes:
    """`{"<channel>":{"epoch":"<e>","offset":<n>},...}`."""
    return orjson.dumps(
        {channel: {"epoch": p.epoch, "offset": p.offset} for channel, p in positions}
    )


def positioned_json(payload: bytes, positions: Iterable[tuple[str, Position]]) -> bytes:
    """A message's JSON for positioned sockets: its keys as sent, then `positions`.

    The message's JSON is an object (`{...}`): its closing brace makes room for one more key,
    so that the message is never decoded and encoded again.
    """
    return payload[:-1] + b',"positions":' + positions_json(positions) + b"}"


def positioned_subscribed_json(channel: str, position: Position, recovered: bool | None) -> bytes:
    """The `subscribed` frame's JSON for a positioned socket, history on."""
    frame: dict[str, object] = {
        "event": "subscribed",
        "data": orjson.dumps({"channel": channel}).decode(),
        "positions": {channel: {"epoch": position.epoch, "offset": position.offset}},
    }
    if recovered is not None:
        frame["recovered"] = recovered
    return orjson.dumps(frame)


def unpositioned_subscribed_json(channel: str) -> bytes:
    """The `subscribed` frame's JSON for a channel `since` named while history is off: nothing
    to resume from, so it is not recovered, and no position is given."""
    frame = {
        "event": "subscribed",
        "data": orjson.dumps({"channel": channel}).decode(),
        "recovered": False,
    }
    return orjson.dumps(frame)
