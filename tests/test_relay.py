"""What the Redis broker's nodes say to each other (`bifrost/rules/relay.py`), without Redis."""

from __future__ import annotations

import pytest

from bifrost.rules.registry import Totals
from bifrost.rules.relay import (
    Envelope,
    PendingBroadcast,
    RedisNames,
    SeenBroadcasts,
    cluster_totals,
    decode_answer,
    decode_envelope,
    encode_answer,
    encode_envelope,
    heartbeat,
    other_nodes,
)


def test_envelope_keeps_channels_and_message_bytes_exactly():
    """An envelope carries any channel name and the message's JSON bytes unchanged."""
    envelope = Envelope("id1", "node1", ["a\nb", "ü", ""], b'{"event":"x","data":"l1\\nl2"}\n')
    assert decode_envelope(encode_envelope(envelope)) == envelope
    for junk in (b"", b"no header", b"[1]\n{}", b'{"id":1,"reply":"n","channels":[]}\n{}'):
        with pytest.raises(ValueError):
            decode_envelope(junk)


def test_envelope_without_channels_list_of_strings_is_refused():
    """A header whose channels are not a list of names is not an envelope."""
    for header in (b'{"id":"i","reply":"n"}', b'{"id":"i","reply":"n","channels":["a",1]}'):
        with pytest.raises(ValueError):
            decode_envelope(header + b"\n{}")


def test_answer_round_trips_and_garbage_is_refused():
    """An answer carries a broadcast id and a count of sockets; anything else is not one."""
    assert decode_answer(encode_answer("abc", 17)) == ("abc", 17)
    assert decode_answer(encode_answer("abc", 0)) == ("abc", 0)
    for junk in (
        b"",
        b"abc",
        b"abc 1 2",
        b"abc -1",
        b"abc +1",
        b"abc 1_0",
        b"abc \xc2\xb2",
        b"abc " + b"9" * 5000,
        b"\xff 1",
    ):
        with pytest.raises(ValueError):
            decode_answer(junk)


def test_only_the_first_copy_of_a_broadcast_is_new():
    """A node delivers the first copy of a broadcast and recognises the others by id."""
    seen = SeenBroadcasts()
    assert seen.first_copy("a")
    assert seen.first_copy("b")
    assert not seen.first_copy("a")
    assert not seen.first_copy("b")


def test_seen_ids_are_bounded_oldest_forgotten_first():
    """The memory of ids seen is bounded: past it, the oldest id is forgotten."""
    seen = SeenBroadcasts(remembered=2)
    for broadcast_id in ("a", "b", "c"):
        assert seen.first_copy(broadcast_id)
    assert not seen.first_copy("c")
    assert not seen.first_copy("b")
    assert seen.first_copy("a")


def settled_log() -> tuple[PendingBroadcast, list[str]]:
    log: list[str] = []
    return PendingBroadcast(on_settled=lambda: log.append("settled")), log


def test_pending_broadcast_settles_once_every_copy_is_answered():
    """The wait ends when as many answers came as copies went out, and counts their sum."""
    pending, log = settled_log()
    pending.answer(2)  # an answer may come before PUBLISH returns
    assert log == []
    pending.expect(3)
    pending.answer(0)
    assert log == [] and not pending.complete
    pending.answer(5)
    assert log == ["settled"]
    assert (pending.complete, pending.deliveries, pending.lost) == (True, 7, False)


def test_pending_broadcast_with_no_copies_settles_at_once():
    """A broadcast nobody subscribed to owes no answer: it settles with zero deliveries."""
    pending, log = settled_log()
    pending.expect(0)
    assert log == ["settled"] and pending.complete and pending.deliveries == 0


def test_pending_broadcast_given_up_settles_once_with_what_it_has():
    """Redis lost: the wait ends once, with the deliveries confirmed so far, marked lost."""
    pending, log = settled_log()
    pending.expect(3)
    pending.answer(4)
    pending.give_up()
    pending.answer(1)  # a late answer after the loss counts, but settles nothing again
    pending.give_up()
    assert log == ["settled"]
    assert (pending.lost, pending.complete, pending.answered, pending.deliveries) == (
        True,
        False,
        2,
        5,
    )


def test_heartbeat_figures_sum_over_nodes():
    """`/info.json` is this node's figures plus every other node's heartbeat."""
    local = Totals(connected=2, deliveries=10, channels=1, subscriptions=3)
    other = {k.encode(): str(v).encode() for k, v in heartbeat(Totals(5, 7, 2, 6)).items()}
    assert heartbeat(local) == {
        "connected": 2,
        "deliveries": 10,
        "channels": 1,
        "subscriptions": 3,
        "event_streams": 0,
    }
    assert cluster_totals(local, [other, other]) == Totals(12, 24, 5, 15)
    assert cluster_totals(local, []) == local


def test_a_heartbeat_of_an_earlier_version_counts_no_event_streams():
    """A node that predates event streams writes the four first figures only: its
    connections count, as websockets."""
    local = Totals(1, 1, 1, 1, event_streams=1)
    earlier = {b"connected": b"5", b"deliveries": b"6", b"channels": b"2", b"subscriptions": b"7"}
    assert cluster_totals(local, [earlier]) == Totals(6, 7, 3, 8, event_streams=1)


def test_a_hash_that_is_not_a_heartbeat_counts_for_nothing():
    """A hash under the prefix with a field missing or not a count adds nothing to the totals."""
    local = Totals(1, 1, 1, 1)
    missing = {b"connected": b"5", b"deliveries": b"5", b"channels": b"5"}
    garbage = {b"connected": b"x", b"deliveries": b"5", b"channels": b"5", b"subscriptions": b"5"}
    negative = {b"connected": b"-9", b"deliveries": b"0", b"channels": b"0", b"subscriptions": b"0"}
    assert cluster_totals(local, [missing, garbage, negative]) == local


def test_names_live_under_the_prefix_and_channel_names_never_fail():
    """Every key and pub/sub channel starts with the prefix; any channel name can be keyed."""
    names = RedisNames("staging:")
    assert names.channel("ü") == "staging:channel:ü".encode()
    assert names.channel("\ud800") == b"staging:channel:\xed\xa0\x80"
    assert names.reply("n1") == b"staging:reply:n1"
    assert (names.node("n1"), names.nodes) == ("staging:node:n1", "staging:nodes")


def test_the_nodes_set_names_the_other_nodes_and_nothing_else():
    """This node and members that are not text are not read as other nodes."""
    assert other_nodes([b"me", b"n1", b"\xff", b"n2"], "me") == ["n1", "n2"]


def test_counts_too_long_to_be_counts_are_refused():
    """Thousands of digits are no count: ignored, without Python's digit limit raising."""
    local = Totals(1, 1, 1, 1)
    huge = {name.encode(): b"9" * 5000 for name in heartbeat(local)}
    assert cluster_totals(local, [huge]) == local
