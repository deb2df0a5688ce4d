"""The in-process history of `bifrost/rules/streams.py`, with the time passed in, no server."""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable

from bifrost.rules.positions import Position
from bifrost.rules.streams import Streams

TTL = 300.0
BURST = 10_000


def epochs() -> Callable[[], str]:
    """Epochs e1, e2, ... in the order the streams start, so that a test can name them."""
    made = 0

    def make() -> str:
        nonlocal made
        made += 1
        return f"e{made}"

    return make


def payloads(streams: Streams, channel: str, since: Position | None, now: float) -> list[bytes]:
    return [entry.payload for entry in streams.snapshot(channel, since, now).entries]


def traced_bytes() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def test_memory_returns_after_a_burst_of_channels_expires():
    """What 10,000 one-message channels hold is given back once their TTL has passed and the
    streams are next used: the process does not keep every channel it ever saw."""
    tracemalloc.start()
    try:
        streams = Streams(size=100, ttl=TTL)
        baseline = traced_bytes()
        for i in range(BURST):
            streams.append([f"burst:{i}"], b'{"event":"m","data":%d}' % i, now=0.0)
        burst = traced_bytes() - baseline
        assert len(streams) == BURST
        # Any call expires: here a socket asks for one of the channels after the TTL.
        snapshot = streams.snapshot("burst:0", Position("gone", 1), now=TTL + 1)
        after = traced_bytes() - baseline
    finally:
        tracemalloc.stop()
    assert burst > BURST * 256, f"the burst held only {burst} bytes: nothing was measured"
    # Only the channel just asked for keeps a stream: new and empty.
    assert len(streams) == 1 and snapshot.top == 0 and not snapshot.entries
    # What is left is the table that held the channels, sized for the burst, not the streams.
    assert after < burst / 20, f"{after} bytes still held of the burst's {burst}"


def test_expiry_takes_time_in_proportion_to_the_streams_forgotten():
    """Forgetting 100,000 expired streams in one call takes a fraction of the time that making
    them took, not a time that grows with the square of their number: the call runs on the
    event loop, in front of every socket."""
    streams = Streams(size=100, ttl=TTL)
    started = time.perf_counter()
    for i in range(10 * BURST):
        streams.append([f"burst:{i}"], b"{}", now=0.0)
    made = time.perf_counter() - started
    started = time.perf_counter()
    streams.snapshot("other", None, now=TTL + 1)
    forgotten = time.perf_counter() - started
    assert len(streams) == 1
    assert forgotten < made / 4, f"expiry took {forgotten:.3f} s, the appends {made:.3f} s"


def test_a_stream_keeps_its_last_size_messages():
    """A channel keeps only its last `size` messages, while its offsets go on counting."""
    streams = Streams(size=3, ttl=TTL, make_epoch=epochs())
    for n in range(1, 6):
        assert streams.append(["c"], b"m%d" % n, now=n) == (("c", Position("e1", n)),)
    snapshot = streams.snapshot("c", Position("e1", 0), now=6)
    assert (snapshot.epoch, snapshot.top) == ("e1", 5)
    assert [entry.payload for entry in snapshot.entries] == [b"m3", b"m4", b"m5"]
    assert [dict(entry.positions)["c"].offset for entry in snapshot.entries] == [3, 4, 5]
    assert payloads(streams, "c", Position("e1", 3), now=6) == [b"m4", b"m5"]
    assert payloads(streams, "c", Position("e1", 5), now=6) == []


def test_snapshot_without_since_gives_no_messages():
    """Without a position asked for, a snapshot says where the channel stands and nothing more."""
    streams = Streams(size=10, ttl=TTL, make_epoch=epochs())
    streams.append(["c"], b"m1", now=0)
    snapshot = streams.snapshot("c", None, now=1)
    assert (snapshot.epoch, snapshot.top, list(snapshot.entries)) == ("e1", 1, [])


def test_epoch_changes_when_the_stream_starts_afresh():
    """The TTL runs from a channel's last message; once it has passed, the channel starts again
    at offset 1 under a new epoch, and a position of the old epoch gets no message."""
    streams = Streams(size=10, ttl=TTL, make_epoch=epochs())
    assert streams.append(["c"], b"m1", now=0) == (("c", Position("e1", 1)),)
    assert streams.append(["c"], b"m2", now=TTL - 1) == (("c", Position("e1", 2)),)
    assert payloads(streams, "c", Position("e1", 0), now=2 * TTL - 2) == [b"m1", b"m2"]
    assert streams.append(["c"], b"m3", now=2 * TTL) == (("c", Position("e2", 1)),)
    snapshot = streams.snapshot("c", Position("e1", 2), now=2 * TTL)
    assert (snapshot.epoch, snapshot.top, list(snapshot.entries)) == ("e2", 1, [])


def test_snapshot_of_an_unknown_channel_gives_the_epoch_of_its_first_message():
    """A channel without messages stands at offset 0, under the epoch its first message then
    carries; without a message within the TTL, that empty stream is forgotten too."""
    streams = Streams(size=10, ttl=TTL, make_epoch=epochs())
    snapshot = streams.snapshot("new", None, now=0)
    assert (snapshot.epoch, snapshot.top, list(snapshot.entries)) == ("e1", 0, [])
    assert streams.append(["new"], b"m1", now=1) == (("new", Position("e1", 1)),)
    assert streams.snapshot("idle", None, now=1).epoch == "e2"
    assert streams.snapshot("idle", None, now=TTL).epoch == "e2"
    assert streams.append(["idle"], b"m1", now=TTL + 1) == (("idle", Position("e3", 1)),)
    assert len(streams) == 1


def test_a_message_to_several_channels_has_its_position_in_each():
    """One message to several channels is kept in each, as one entry naming all its positions."""
    streams = Streams(size=10, ttl=TTL, make_epoch=epochs())
    streams.append(["a"], b"m1", now=0)
    positions = streams.append(["a", "b"], b"m2", now=1)
    assert positions == (("a", Position("e1", 2)), ("b", Position("e2", 1)))
    (in_a,) = streams.snapshot("a", Position("e1", 1), now=2).entries
    (in_b,) = streams.snapshot("b", Position("e2", 0), now=2).entries
    assert in_a == in_b and in_a.positions == positions and in_a.payload == b"m2"
