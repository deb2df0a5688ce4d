"""The recovery rules of `bifrost/rules/history.py`, with plain snapshots."""

from __future__ import annotations

import orjson
import pytest

from bifrost.rules.history import (
    ChannelSnapshot,
    Entry,
    plan_recovery,
    positioned_json,
)
from bifrost.rules.positions import Position, since_problem


def message(number: int, **offsets: int) -> Entry:
    """Message `number`, broadcast to the channels named, at those offsets of epoch "e"."""
    positions = tuple((channel, Position("e", offset)) for channel, offset in offsets.items())
    return Entry(orjson.dumps({"event": "m", "data": number}), positions)


def sent(messages: list[Entry]) -> list[tuple[int, dict[str, int]]]:
    """Each message's number and the offsets its frame names."""
    return [
        (orjson.loads(entry.payload)["data"], {c: p.offset for c, p in entry.positions})
        for entry in messages
    ]


def test_a_complete_stream_is_recovered_from_the_position():
    kept = [message(n, a=n) for n in (3, 4, 5)]
    recovery = plan_recovery(
        ["a"], {"a": Position("e", 2)}, {"a": ChannelSnapshot("e", 5, kept)}, 10, 10**6
    )
    assert recovery.recovered == {"a": True}
    assert recovery.starts == {"a": Position("e", 2)}
    assert sent(recovery.messages([], {"a"})) == [(3, {"a": 3}), (4, {"a": 4}), (5, {"a": 5})]


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
    assert recovery.messages([], {"a"}) == []


def test_a_message_of_two_channels_goes_once_in_both_orders():
    shared = message(2, a=2, b=1)
    snapshots = {
        "a": ChannelSnapshot("e", 3, [message(1, a=1), shared, message(3, a=3)]),
        "b": ChannelSnapshot("e", 2, [shared, message(4, b=2)]),
    }
    since = {"a": Position("e", 0), "b": Position("e", 0)}
    recovery = plan_recovery(["a", "b"], since, snapshots, 10, 10**6)
    order = [n for n, _ in sent(recovery.messages([], {"a", "b"}))]
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
    assert sent(recovery.messages([], {"a", "b"})) == [(1, {"a": 1}), (2, {"a": 2})]


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
    assert sent(recovery.messages(held, {"a", "n"})) == [
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


def test_a_positioned_message_is_its_json_and_its_positions():
    """The message's keys as sent, then `positions`, without decoding the message again."""
    recovery = plan_recovery(
        ["a"], {"a": Position("e", 0)}, {"a": ChannelSnapshot("e", 1, [message(1, a=1)])}, 10, 10**6
    )
    [entry] = recovery.messages([], {"a"})
    assert positioned_json(entry.payload, entry.positions) == (
        b'{"event":"m","data":1,"positions":{"a":{"epoch":"e","offset":1}}}'
    )


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


def test_a_message_held_through_another_channel_goes_out_in_its_place():
    """Through Redis a node not yet subscribed to a new channel still hears a message sent to
    it and to a channel the node hears already (held), not a later one sent to it alone (kept
    only): the recovered messages still go out in the channel's order, each once."""
    first = message(0, c1=1, c2=1)  # reached the node through c1, heard there by another socket
    alone = message(2, c2=2)  # sent before the node's subscription to c2 took
    third = message(1, c1=2, c2=3)  # through c1 again
    snapshots = {
        "c0": ChannelSnapshot("e", 0),
        "c2": ChannelSnapshot("e", 3, [first, alone, third]),
    }
    since = {"c0": Position("e", 0), "c2": Position("e", 0)}
    recovery = plan_recovery(["c0", "c2"], since, snapshots, 10, 10**6)
    assert recovery.recovered == {"c0": True, "c2": True}
    assert sent(recovery.messages([first, third], {"c0", "c2"})) == [
        (0, {"c2": 1}),
        (2, {"c2": 2}),
        (1, {"c2": 3}),
    ]


def test_messages_of_a_channel_heard_already_keep_their_order():
    """A socket that hears `a` and adds `b` with a position gets the messages of `b` it missed
    and every message of `a` held meanwhile, each once and in the order of each channel."""
    missed = message(0, b=1)  # before the socket began to hear b: kept only
    both = message(2, a=6, b=2)
    held_b = message(3, b=3)
    snapshots = {"b": ChannelSnapshot("e", 3, [missed, both, held_b])}
    recovery = plan_recovery(["b"], {"b": Position("e", 0)}, snapshots, 10, 10**6)
    held = [message(1, a=5), both, held_b, message(4, a=7)]
    out = sent(recovery.messages(held, {"a", "b"}))
    assert sorted(n for n, _ in out) == [0, 1, 2, 3, 4]
    assert [offsets["a"] for _, offsets in out if "a" in offsets] == [5, 6, 7]
    assert [offsets["b"] for _, offsets in out if "b" in offsets] == [1, 2, 3]
    assert dict(out)[2] == {"a": 6, "b": 2}


def test_a_held_message_the_client_had_already_is_not_sent_again():
    """Through Redis a message may reach the new node after the client had it from the old
    one: held, it is not sent again; one published after the snapshot follows."""
    recovery = plan_recovery(
        ["c"], {"c": Position("e", 2)}, {"c": ChannelSnapshot("e", 3, [message(1, c=3)])}, 10, 10**6
    )
    held = [message(0, c=2), message(1, c=3), message(2, c=4)]
    assert sent(recovery.messages(held, {"c"})) == [(1, {"c": 3}), (2, {"c": 4})]
