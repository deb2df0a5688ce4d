"""What the nodes of the Redis broker say to each other, and how they count it.

No Redis and no asyncio here, so that these rules are unit-tested with plain values: the
broker (`bifrost.brokers.redis`) does the I/O and asks this module what the bytes mean.

- A broadcast travels as an envelope (id, channels, publisher, message) published on each
  channel it names; with history on, the server-side script that gives it its offsets adds
  them on a line of their own (`bifrost.brokers.redis_scripts`), and the envelope is what the
  channel's stream keeps.
- A node that gets several copies of one broadcast (it hears several of its channels)
  delivers the first and answers the others with zero: it remembers the latest ids it saw.
- Each copy is answered on the publisher's reply channel with `"<id> <sockets reached>"`;
  the publisher waits for as many answers as PUBLISH said copies went out.
- `/info.json` adds this node's figures to the heartbeat hash of every other node.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import cast

import orjson

from bifrost.rules.history import ChannelSnapshot, Entry
from bifrost.rules.positions import MessagePositions, Position
from bifrost.rules.registry import Totals

__all__ = [
    "REMEMBERED_BROADCASTS",
    "Envelope",
    "PendingBroadcast",
    "RedisNames",
    "SeenBroadcasts",
    "cluster_totals",
    "decode_answer",
    "decode_envelope",
    "decode_positions",
    "decode_snapshot",
    "encode_answer",
    "encode_envelope",
    "envelope_head",
    "heartbeat",
    "other_nodes",
]

# Copies of one broadcast arrive together; this many ids is ample to recognise the others.
REMEMBERED_BROADCASTS = 10_000

_FIGURES = tuple(figure.name for figure in fields(Totals))
# The figures every heartbeat has; those added since (`event_streams`) are 0 in the heartbeat
# of a node of an earlier version, which has none of them, during a rolling deploy.
_REQUIRED_FIGURES = ("connected", "deliveries", "channels", "subscriptions")
# More digits than any count of sockets or deliveries reaches (2**63 has 19), and well under
# the length at which Python refuses to convert digits to an int.
_COUNT_DIGITS = 19


@dataclass(frozen=True, slots=True)
class RedisNames:
    """The keys and pub/sub channels of one deployment, all under its prefix."""

    prefix: str

    def channel(self, channel: str) -> bytes:
        """The channel's pub/sub key; a lone surrogate a token carried passes through, since
        this runs while a socket's frame is handled, where nothing may raise."""
        return f"{self.prefix}channel:{channel}".encode(errors="surrogatepass")

    def reply(self, node: str) -> bytes:
        """The pub/sub channel where a node hears the answers to its broadcasts."""
        return f"{self.prefix}reply:{node}".encode()

    def stream(self, channel: str) -> bytes:
        """The Redis Stream keeping the channel's messages, history on."""
        return f"{self.prefix}stream:{channel}".encode(errors="surrogatepass")

    def meta(self, channel: str) -> bytes:
        """The hash with the epoch and top offset of the channel's stream."""
        return f"{self.prefix}meta:{channel}".encode(errors="surrogatepass")

    def history_keys(self, channels: Iterable[str]) -> list[bytes]:
        """The meta hash and the stream of each channel, in pairs: the keys both history
        scripts take, in the order they read them."""
        return [key for c in channels for key in (self.meta(c), self.stream(c))]

    def node(self, node: str) -> str:
        """The hash holding a node's heartbeat figures."""
        return f"{self.prefix}node:{node}"

    @property
    def nodes(self) -> str:
        """The set naming every node whose heartbeat may be read."""
        return f"{self.prefix}nodes"


@dataclass(frozen=True, slots=True)
class Envelope:
    """One broadcast as it travels between nodes."""

    id: str
    reply: str
    channels: list[str]
    payload: bytes
    positions: MessagePositions | None = None


def encode_envelope(envelope: Envelope) -> bytes:
    """A JSON header line, then the message's JSON untouched (never decoded and re-encoded)."""
    header = {"id": envelope.id, "reply": envelope.reply, "channels": envelope.channels}
    return orjson.dumps(header) + b"\n" + envelope.payload


def envelope_head(broadcast_id: str, reply: str, channels: list[str]) -> bytes:
    """The header line of an envelope whose positions the publish script writes after it."""
    header = {"id": broadcast_id, "reply": reply, "channels": channels, "positioned": True}
    return orjson.dumps(header) + b"\n"


def decode_envelope(data: bytes) -> Envelope:
    """The envelope in `data`; ValueError when it is not one."""
    header_line, newline, payload = data.partition(b"\n")
    header = orjson.loads(header_line) if newline else None
    if not isinstance(header, dict):
        raise ValueError("not a broadcast envelope")
    broadcast_id, reply, channels = header.get("id"), header.get("reply"), header.get("channels")
    if not (
        isinstance(broadcast_id, str)
        and isinstance(reply, str)
        and isinstance(channels, list)
        and all(isinstance(c, str) for c in channels)
    ):
        raise ValueError("broadcast envelope without id, reply and channels")
    if header.get("positioned") is not True:
        return Envelope(broadcast_id, reply, channels, payload)
    line, newline, payload = payload.partition(b"\n")
    if not newline:
        raise ValueError("positioned envelope without its positions")
    return Envelope(broadcast_id, reply, channels, payload, decode_positions(channels, line))


def decode_positions(channels: list[str], line: bytes) -> MessagePositions:
    """The positions line the publish script wrote, `<epoch> <offset>` for each channel."""
    words = line.split(b" ")
    if len(words) != 2 * len(channels):
        raise ValueError("positions do not match the channels")
    positions = []
    for channel, epoch, offset in zip(channels, words[::2], words[1::2], strict=True):
        count = _count(offset)
        if count is None or not epoch.isascii():
            raise ValueError(f"not a position: {epoch[:40]!r} {offset[:40]!r}")
        positions.append((channel, Position(epoch.decode(), count)))
    return tuple(positions)


def decode_snapshot(channel: str, reply: list[object]) -> ChannelSnapshot:
    """One channel's part of the snapshot script's answer: epoch, top and kept entries."""
    epoch, top, entries = reply
    if not isinstance(epoch, bytes) or not isinstance(top, int) or not isinstance(entries, list):
        raise ValueError(f"not a snapshot of {channel!r}")
    kept = []
    for _entry_id, values in entries:
        envelope = decode_envelope(values[1])
        if envelope.positions is None:
            raise ValueError(f"an entry of {channel!r} has no positions")
        kept.append(Entry(envelope.payload, envelope.positions))
    return ChannelSnapshot(epoch.decode(), top, kept)


def encode_answer(broadcast_id: str, delivered: int) -> bytes:
    """A node's answer to one copy of a broadcast: its id and the sockets the node reached."""
    return f"{broadcast_id} {delivered}".encode()


def decode_answer(data: bytes) -> tuple[str, int]:
    """The broadcast id and count of an answer; ValueError when it is not one."""
    broadcast_id, delivered = data.split()
    count = _count(delivered)
    if count is None:
        raise ValueError(f"not a count of sockets: {delivered[:40]!r}")
    return broadcast_id.decode(), count


def _count(text: bytes) -> int | None:
    """The non-negative integer `text` spells in plain ASCII digits, or None."""
    if 0 < len(text) <= _COUNT_DIGITS and text.isdigit():
        return int(text)
    return None


class SeenBroadcasts:
    """The ids of the latest broadcasts delivered here, to recognise their other copies."""

    __slots__ = ("_ids", "_remembered")

    def __init__(self, remembered: int = REMEMBERED_BROADCASTS) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._remembered = remembered

    def first_copy(self, broadcast_id: str) -> bool:
        """Whether this is the first copy of the broadcast to arrive; remember it if so."""
        if broadcast_id in self._ids:
            return False
        self._ids[broadcast_id] = None
        if len(self._ids) > self._remembered:
            self._ids.popitem(last=False)
        return True


class PendingBroadcast:
    """A publisher's count of the answers to one of its broadcasts.

    It settles, calling `on_settled` once, when every copy PUBLISH handed out has been
    answered, or when Redis is lost and no more answers can come; the broker turns that into
    the end of its wait (an asyncio future, which this module knows nothing of).
    """

    __slots__ = ("_on_settled", "answered", "deliveries", "expected", "lost", "settled")

    def __init__(self, on_settled: Callable[[], object]) -> None:
        self._on_settled = on_settled
        self.expected: int | None = None
        self.answered = 0
        self.deliveries = 0
        self.lost = False
        self.settled = False

    @property
    def complete(self) -> bool:
        """Whether every copy has been answered: `deliveries` is then exact."""
        return self.expected is not None and self.answered >= self.expected

    def expect(self, copies: int) -> None:
        """PUBLISH said how many copies went out: as many answers are owed."""
        self.expected = copies
        if self.complete:
            self._settle()

    def answer(self, deliveries: int) -> None:
        """One node answered one copy with the sockets it reached."""
        self.answered += 1
        self.deliveries += deliveries
        if self.complete:
            self._settle()

    def give_up(self) -> None:
        """Redis is lost: no more answers will come."""
        self.lost = True
        self._settle()

    def _settle(self) -> None:
        if not self.settled:
            self.settled = True
            self._on_settled()


def heartbeat(figures: Totals) -> dict[str, int]:
    """A node's figures as the fields of its heartbeat hash."""
    return {name: getattr(figures, name) for name in _FIGURES}


def other_nodes(members: Iterable[bytes], own: str) -> list[str]:
    """The ids in the nodes set other than this node's; a member that is not text (written
    by something else under the prefix) names no node."""
    nodes = []
    for member in members:
        try:
            node = member.decode()
        except UnicodeDecodeError:
            continue
        if node != own:
            nodes.append(node)
    return nodes


def cluster_totals(local: Totals, heartbeats: Iterable[Mapping[bytes, bytes]]) -> Totals:
    """This node's figures plus those of every other node's heartbeat hash.

    A hash that is not a heartbeat (one of the four first figures missing, or a figure that
    is not a count: written by something else under the prefix) counts for nothing rather
    than failing `/info.json`; a later figure missing is 0, as in an earlier version's.
    """
    figures = [local]
    for values in heartbeats:
        counts = [
            _count(values.get(name.encode(), b"" if name in _REQUIRED_FIGURES else b"0"))
            for name in _FIGURES
        ]
        if None not in counts:
            figures.append(Totals(*cast("list[int]", counts)))
    return Totals(*(sum(getattr(f, name) for f in figures) for name in _FIGURES))
