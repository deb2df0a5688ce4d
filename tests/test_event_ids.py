"""The ids of event streams, `bifrost/rules/event_ids.py`: what they say, and what they fit in."""

from __future__ import annotations

import gc
import weakref

import pytest

from bifrost.rules.event_ids import (
    UNKNOWN,
    IdLayout,
    IdLayouts,
    channel_hash,
    since_from_id,
    start_cursor,
)
from bifrost.rules.positions import EPOCH_LENGTH, Position, new_epoch

URL_SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def test_an_id_says_every_position_and_decodes_to_them():
    """A stream's id after its events names each channel's position; decoded, it is the
    `since` a websocket would send."""
    layout = IdLayout(["room:1", "user:7"])
    cursor = start_cursor(layout, {})
    cursor = cursor.advanced([("room:1", Position("e" * 16, 4))])
    cursor = cursor.advanced([("user:7", Position("f" * 16, 0)), ("elsewhere", Position("g", 1))])
    assert since_from_id(cursor.id, layout) == {
        "room:1": Position("e" * 16, 4),
        "user:7": Position("f" * 16, 0),
    }


def test_channels_are_named_by_hash_never_by_name():
    """No channel name appears in an id, only its 8-character hash."""
    layout = IdLayout(["secret-room-name"])
    event_id = start_cursor(layout, {"secret-room-name": Position("e" * 16, 3)}).id
    assert "secret" not in event_id
    assert event_id == f"{channel_hash('secret-room-name')}.{'e' * 16}.3"
    assert len(channel_hash("secret-room-name")) == 8


def test_the_id_of_the_most_channels_fits_a_header_and_a_url():
    """100 channels of 255 characters at large offsets: about 3.5 KB of URL-safe text."""
    channels = [f"{n:03d}" + "x" * 252 for n in range(100)]
    layout = IdLayout(channels)
    positions = {channel: Position(new_epoch(), 10**12) for channel in channels}
    event_id = start_cursor(layout, positions).id
    assert len(event_id) < 4096
    assert set(event_id) <= URL_SAFE
    assert since_from_id(event_id, layout) == positions


def test_a_channel_not_yet_confirmed_is_named_at_no_position():
    """Before its `subscribed` event a channel the id did not name is at a position not known:
    a connection lost then comes back `recovered: false` for it, never unawares."""
    layout = IdLayout(["a", "b"])
    cursor = start_cursor(layout, {}).advanced([("a", Position("e" * 16, 0))])
    assert since_from_id(cursor.id, layout) == {"a": Position("e" * 16, 0), "b": UNKNOWN}


def test_a_since_position_is_kept_until_its_channel_is_confirmed():
    """A stream asked to resume names where it resumes from, so that a connection lost in the
    middle of a recovery resumes from there again."""
    layout = IdLayout(["a", "b"])
    since = {"a": Position("e" * 16, 5), "b": Position("f" * 16, 9)}
    cursor = start_cursor(layout, since).advanced([("a", Position("e" * 16, 5))])
    assert since_from_id(cursor.id, layout) == since


@pytest.mark.parametrize(
    "event_id",
    [
        "garbage",
        "",
        "~",
        "AAAAAAAA.e",
        "AAAAAAAA.e.1.2",
        "AAAAAAAA.e.-1",
        "AAAAAAAA.e.1x",
        "AAAAAAAA.e e.1",
        "AAAAAAAA." + "e" * 65 + ".1",
        "AAAAAAAA.e." + "9" * 20,
        "AAAAAAA.e.1",
    ],
)
def test_an_id_that_does_not_decode_names_every_channel_at_no_position(event_id: str):
    """Refusing it would stop EventSource for good; taking it as a first connection would let
    the client believe it missed nothing: every channel is `recovered: false`."""
    layout = IdLayout(["a", "b"])
    assert since_from_id(event_id, layout) == {"a": UNKNOWN, "b": UNKNOWN}


def test_a_channel_named_twice_does_not_decode():
    layout = IdLayout(["a"])
    part = start_cursor(layout, {"a": Position("e", 1)}).id
    assert since_from_id(f"{part}~{part}", layout) == {"a": UNKNOWN}


def test_hashes_of_channels_outside_the_token_are_ignored():
    """An id from a token with other channels recovers those the new token shares with it."""
    old = IdLayout(["gone", "kept"])
    event_id = start_cursor(old, {"gone": Position("e", 1), "kept": Position("f", 2)}).id
    new = IdLayout(["kept", "added"])
    assert since_from_id(event_id, new) == {"kept": Position("f", 2)}


def test_an_epoch_that_is_not_bifrosts_is_written_as_no_position():
    """An epoch that could break the id (a shared Redis holding anything) is never written."""
    layout = IdLayout(["a"])
    cursor = start_cursor(layout, {}).advanced([("a", Position("bad\nepoch", 1))])
    assert cursor.id == channel_hash("a")
    assert since_from_id(cursor.id, layout) == {"a": UNKNOWN}


def test_an_advanced_cursor_leaves_the_one_before_unchanged():
    """Cursors are shared by the streams at the same positions: advancing makes a new one."""
    layout = IdLayout(["a"])
    before = start_cursor(layout, {"a": Position("e", 1)})
    after = before.advanced([("a", Position("e", 2))])
    assert since_from_id(before.id, layout) == {"a": Position("e", 1)}
    assert since_from_id(after.id, layout) == {"a": Position("e", 2)}
    assert after.layout is before.layout


def test_layouts_are_shared_per_list_of_channels_while_in_use():
    """Streams of the same token share one layout, so the fan-out can tell their cursors apart
    from others' by identity; a layout no stream holds is forgotten."""
    layouts = IdLayouts()
    first = layouts.layout(["a", "b"])
    assert layouts.layout(["a", "b"]) is first
    assert layouts.layout(["b", "a"]) is not first
    held = weakref.ref(first)
    del first
    gc.collect()
    assert held() is None, "the layouts keep a layout nobody holds"


def test_epochs_are_made_of_the_characters_an_id_carries():
    """Bifröst's epochs fit an id as they are."""
    for _ in range(100):
        epoch = new_epoch()
        assert len(epoch) == EPOCH_LENGTH
        layout = IdLayout(["a"])
        assert since_from_id(start_cursor(layout, {"a": Position(epoch, 1)}).id, layout) == {
            "a": Position(epoch, 1)
        }
