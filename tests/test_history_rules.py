"""The recovery rules of `bifrost/rules/history.py`, with plain snapshots."""

from __future__ import annotations

import orjson
import pytest

from bifrost.rules.history import ChannelSnapshot, Entry, plan_recovery
from bifrost.rules.positions import Position, since_problem
from bifrost.rules.protocol import text_frame


def message(number: int, **offsets: int) -> Entry:
    """Message `number`, broadcast to the channels named, at those offsets of epoch "e"."""
    positions = tuple((channel, Position("e", offset)) for channel, offset in offsets.items())
    return Entry(orjson.dumps({"event": "m", "data": number}), positions)


def sent(frames: list[bytes]) -> list[tuple[int, dict[str, int]]]:
    """Each frame's message number and the offsets it names."""
    out = []
    for frame in frames:
        body = orjson.loads(frame[2:] if frame[1] < 126 else frame[4:])
        out.append((body["data"], {c: p["offset"] for c, p in body["positions"].items()}))
    return out


def test_a_complete_stream_is_recovered_from_the_position():
    kept = [message(n, a=n) for n in (3, 4, 5)]
    recovery = plan_recovery(
        ["a"], {"a": Position("e", 2)}, {"a": ChannelSnapshot("e", 5, kept)}, 10, 10**6
    )
    assert recovery.recovered == {"a": True}
    assert recovery.starts == {"a": Position("e", 2)}
    assert sent(recovery.frames([], {"a"})) == [(3, {"a": 3}), (4, {"a": 4}), (5, {"a": 5})]


@pytest.mark.parametrize(
    ("since", "snapshot"),
    [
        (Position("old", 2), ChannelSnapshot("e", 3, [message(3, a=3)])),  # new epoch
        (Position("e", 1), ChannelSnapshot("e", 3, [message(3, a=3)])),  # 2 evicted
        (Position("e", 9), ChannelSnapshot("e", 3, [])),  # from the future
    ],
)
def test_an_incomplete_recovery_sends_nothing_old(since, snapshot):
    recovery = plan_recovery(["a"], {"a": since}, {"a": snapshot}, 10, 10**6)
    assert recovery.recovered == {"a": False}
    assert recovery.starts == {"a": Position("e", 3)}
    assert recovery.frames([], {"a"}) == []


def test_a_message_of_two_channels_goes_once_in_both_orders():
    shared = message(2, a=2, b=1)
    snapshots = {
        "a": ChannelSnapshot("e", 3, [message(1, a=1), shared, message(3, a=3)]),
        "b": ChannelSnapshot("e", 2, [shared, message(4, b=2)]),
    }
    since = {"a": Position("e", 0), "b": Position("e", 0)}
    recovery = plan_recovery(["a", "b"], since, snapshots, 10, 10**6)
    order = [n for n, _ in sent(recovery.frames([], {"a", "b"}))]
    assert sorted(order) == [1, 2, 3, 4]
    assert order.index(1) < order.index(2) < order.index(3)
    assert order.index(2) < order.index(4)


def test_a_channel_further_on_than_another_names_no_older_position():
    """A message the client had through `b` but missed through `a` comes once, naming only
    `a`: `b`'s position never goes back."""
    shared = message(2, a=2, b=5)
    snapshots = {
        "a": ChannelSnapshot("e", 2, [message(1, a=1), shared]),
        "b": ChannelSnapshot("e", 5, []),
    }
    since = {"a": Position("e", 0), "b": Position("e", 5)}
    recovery = plan_recovery(["a", "b"], since, snapshots, 10, 10**6)
    assert recovery.recovered == {"a": True, "b": True}
    assert sent(recovery.frames([], {"a", "b"})) == [(1, {"a": 1}), (2, {"a": 2})]


def test_held_messages_follow_and_go_once():
    """A live message held during the recovery that the snapshot also kept goes out once;
    one the snapshot covers for a channel not recovered is dropped; later ones follow."""
    in_both = message(3, a=3)
    snapshots = {
        "a": ChannelSnapshot("e", 3, [message(2, a=2), in_both]),
        "n": ChannelSnapshot("e", 4, []),
    }
    recovery = plan_recovery(["a", "n"], {"a": Position("e", 1)}, snapshots, 10, 10**6)
    held = [in_both, message(9, n=4), message(10, a=4), message(11, n=5)]
    assert sent(recovery.frames(held, {"a", "n"})) == [
        (2, {"a": 2}),
        (3, {"a": 3}),
        (10, {"a": 4}),
        (11, {"n": 5}),
    ]


def test_the_budget_bounds_one_authenticate():
    snapshots = {
        "a": ChannelSnapshot("e", 2, [message(1, a=1), message(2, a=2)]),
        "b": ChannelSnapshot("e", 2, [message(3, b=1), message(4, b=2)]),
    }
    since = {"a": Position("e", 0), "b": Position("e", 0)}
    assert plan_recovery(["a", "b"], since, snapshots, 3, 10**6).recovered == {
        "a": True,
        "b": False,
    }
    small = len(message(1, a=1).payload) * 2
    assert plan_recovery(["a", "b"], since, snapshots, 10, small).recovered == {
        "a": True,
        "b": False,
    }


def test_frames_are_text_frames_of_the_message_and_its_positions():
    recovery = plan_recovery(
        ["a"], {"a": Position("e", 0)}, {"a": ChannelSnapshot("e", 1, [message(1, a=1)])}, 10, 10**6
    )
    assert recovery.frames([], {"a"}) == [
        text_frame(b'{"event":"m","data":1,"positions":{"a":{"epoch":"e","offset":1}}}')
    ]


@pytest.mark.parametrize(
    "since",
    [
        None,
        [],
        "x",
        {"a": None},
        {"a": {"epoch": "e", "offset": 0, "more": 1}},
        {"a": {"offset": 0}},
    ],
)
def test_since_problems(since):
    assert since_problem(since) is not None


def test_since_accepted():
    assert since_problem({}) is None
    assert (
        since_problem({"a": {"epoch": "e", "offset": 0}, "b": {"epoch": "", "offset": 9}}) is None
    )
