"""Frame rules of `bifrost/rules/protocol.py`, checked without a server."""

from __future__ import annotations

import json

import pytest
from websockets.frames import Frame
from websockets.streams import StreamReader

from bifrost.rules.protocol import (
    BINARY_REFUSED,
    PONG,
    Authenticate,
    ErrorReply,
    Ignore,
    Pong,
    channel_total_refusal,
    error_reply,
    interpret_frame,
    subscribed_reply,
    text_frame,
)


def payload(frame: bytes) -> bytes:
    """The payload of one serialized unmasked server frame, parsed as a client would."""
    reader = StreamReader()
    reader.feed_data(frame)
    parser = Frame.parse(reader.read_exact, mask=False)
    with pytest.raises(StopIteration) as parsed:
        next(parser)
    return bytes(parsed.value.value.data)


@pytest.mark.parametrize(
    ("text", "decision"),
    [
        ('{"event":"authenticate","data":"t"}', Authenticate("t")),
        ('{"event":"authenticate"}', Authenticate(None)),
        ('{"event":"ping"}', Pong()),
        ('{"event":"anything","data":1}', Ignore()),
        ("nope", ErrorReply("frame is not valid JSON")),
        ("[]", ErrorReply("frame must be a JSON object")),
        ('{"event":null}', ErrorReply("frame must have a string event")),
    ],
)
def test_interpret_frame(text, decision):
    """Each kind of client frame maps to its decision."""
    assert interpret_frame(text) == decision


def test_binary_is_refused_with_1003():
    """A binary frame is answered by closing with 1003."""
    assert interpret_frame(b"{}") == BINARY_REFUSED
    assert BINARY_REFUSED.code == 1003


def test_replies_are_exact():
    """Replies have the original's exact shape: data is a JSON-encoded string."""
    assert (
        payload(subscribed_reply("user:1"))
        == b'{"event":"subscribed","data":"{\\"channel\\":\\"user:1\\"}"}'
    )
    assert payload(PONG) == b'{"event":"pong"}'
    reply = json.loads(payload(error_reply("bad")))
    assert reply == {"event": "error", "data": '{"error":"bad"}'}


def test_text_frame_is_unmasked_text():
    """A frame for the fan-out is one unmasked FIN text frame carrying the payload."""
    frame = text_frame(b"x" * 300)
    assert frame[0] == 0x81 and frame[1] & 0x80 == 0
    assert payload(frame) == b"x" * 300


@pytest.mark.parametrize(
    ("held", "granted", "refused_total"),
    [
        (set(), ["a", "b", "c"], None),
        ({"a", "b"}, ["c"], None),
        ({"a", "b", "c"}, ["a", "b", "c"], None),
        ({"a", "b", "c"}, ["c", "a"], None),
        ({"a", "b", "c"}, ["d"], 4),
        ({"a"}, ["a", "b", "c", "d"], 4),
        ({"a", "b"}, ["c", "d", "e"], 5),
    ],
)
def test_channel_total_refusal(held: set[str], granted: list[str], refused_total: int | None):
    """An authenticate that would take a socket over the bound in all, counting the channels
    it already hears once, is refused with a reason naming the bound and the total."""
    refusal = channel_total_refusal(held, granted, max_channels=3)
    if refused_total is None:
        assert refusal is None
    else:
        assert refusal == ErrorReply(
            f"a socket may hear at most 3 channels; this authenticate would make {refused_total}"
        )
