"""The in-process broker's history: a bounded stream of kept messages per channel.

No asyncio here: the caller passes the time, so that expiry is unit-tested without waiting.
A stream keeps its last `size` messages and is forgotten `ttl` seconds after its last message
(or, without any, after it was made), so that memory does not grow with every channel ever
used. The streams are kept in the order they were last written to, so the expired ones are
always at the front and each call forgets them in time proportional to their number: in an
`OrderedDict`, whose first key is found at once however many were removed before it, where a
plain dict skips every slot deleted since it last grew (quadratic over a burst that expires).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from itertools import islice

from bifrost.rules.history import ChannelSnapshot, Entry
from bifrost.rules.positions import MessagePositions, Position, new_epoch

__all__ = ["Streams"]


class _Stream:
    __slots__ = ("entries", "epoch", "top", "written_at")

    def __init__(self, epoch: str, size: int, now: float) -> None:
        self.epoch = epoch
        self.top = 0
        self.entries: deque[Entry] = deque(maxlen=size)
        self.written_at = now


class Streams:
    """Every channel's stream in this process; a restart starts every one afresh."""

    def __init__(self, size: int, ttl: float, make_epoch: Callable[[], str] = new_epoch) -> None:
        self._size = size
        self._ttl = ttl
        self._make_epoch = make_epoch
        self._streams: OrderedDict[str, _Stream] = OrderedDict()

    def __len__(self) -> int:
        """Channels with a stream kept."""
        return len(self._streams)

    def append(self, channels: Sequence[str], payload: bytes, now: float) -> MessagePositions:
        """Keep a message in each of its channels' streams; return its positions there."""
        self._expire(now)
        streams = []
        for channel in channels:
            stream = self._streams.get(channel)
            if stream is None:
                stream = self._streams[channel] = _Stream(self._make_epoch(), self._size, now)
            else:
                self._streams.move_to_end(channel)  # to the back: the most recently written
            stream.top += 1
            stream.written_at = now
            streams.append(stream)
        positions = tuple(
            (channel, Position(stream.epoch, stream.top))
            for channel, stream in zip(channels, streams, strict=True)
        )
        # A copy of exactly its size: orjson's output keeps the 4 KiB buffer it was written in,
        # which a kept message would hold for as long as it is kept.
        entry = Entry(memoryview(payload).tobytes(), positions)
        for stream in streams:
            stream.entries.append(entry)
        return positions

    def snapshot(self, channel: str, since: Position | None, now: float) -> ChannelSnapshot:
        """The channel's epoch and top, and its kept messages after `since` when given.

        A channel without a stream gets one now, empty, so that the epoch a socket is told is
        the one the channel's first message will carry.
        """
        self._expire(now)
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = _Stream(self._make_epoch(), self._size, now)
        entries: list[Entry] = []
        if since is not None and since.epoch == stream.epoch:
            # The kept entries' offsets run without a gap up to the top.
            first = stream.top - len(stream.entries) + 1
            entries = list(islice(stream.entries, max(0, since.offset + 1 - first), None))
        return ChannelSnapshot(stream.epoch, stream.top, entries)

    def _expire(self, now: float) -> None:
        """Forget the streams whose last message is older than the TTL."""
        streams = self._streams
        deadline = now - self._ttl
        while streams:
            if next(iter(streams.values())).written_at > deadline:
                return
            streams.popitem(last=False)
