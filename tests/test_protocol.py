"""Frame rules of `bifrost/rules/protocol.py`, checked without a server."""

from __future__ import annotations

import json

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from bifrost.rules.protocol import (
    BINARY_REFUSED,
    INVALID_TEXT,
    PONG,
    RATE_LIMIT,
    Authenticate,
    ClientFrames,
    ErrorReply,
    Ignore,
    Pong,
    channel_total_refusal,
    error_reply,
    interpret_frame,
    subscribed_json,
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


def test_whole_text_frame_is_a_message():
    """A text frame with FIN set is one message, decoded from UTF-8."""
    frames = ClientFrames(max_frames_per_second=10, now=0.0)
    assert frames.received(Frame(Opcode.TEXT, '{"event":"ping","x":"ø"}'.encode()), 0.0) == (
        '{"event":"ping","x":"ø"}'
    )


def test_fragments_are_joined_before_decoding():
    """A fragmented text message is one message once its last fragment arrives, even when a
    character is cut between fragments; the fragments before the last complete nothing."""
    frames = ClientFrames(max_frames_per_second=10, now=0.0)
    assert frames.received(Frame(Opcode.TEXT, b'"\xc3', fin=False), 0.0) is None
    assert frames.received(Frame(Opcode.CONT, b"\xa9", fin=False), 0.0) is None
    assert frames.received(Frame(Opcode.CONT, b'"'), 0.0) == '"é"'
    assert frames.received(Frame(Opcode.TEXT, b"next"), 0.0) == "next"


def test_continuation_without_a_start_completes_nothing():
    """A stray continuation frame is no message (the parser refuses it as a protocol error)."""
    frames = ClientFrames(max_frames_per_second=10, now=0.0)
    assert frames.received(Frame(Opcode.CONT, b"x"), 0.0) is None


@pytest.mark.parametrize(
    "frame",
    [Frame(Opcode.PING, b"p"), Frame(Opcode.PONG, b"p"), Frame(Opcode.CLOSE, b"\x03\xe8")],
)
def test_control_frames_complete_no_message(frame: Frame):
    """Control frames are the parser's to answer: they complete no message, and cannot cut
    into one being fragmented."""
    frames = ClientFrames(max_frames_per_second=10, now=0.0)
    assert frames.received(Frame(Opcode.TEXT, b"a", fin=False), 0.0) is None
    assert frames.received(frame, 0.0) is None
    assert frames.received(Frame(Opcode.CONT, b"b"), 0.0) == "ab"


@pytest.mark.parametrize(
    "frame",
    [Frame(Opcode.TEXT, b"\xff"), Frame(Opcode.TEXT, b"\xed\xa0\x80"), Frame(Opcode.TEXT, b"\xc3")],
)
def test_text_that_is_not_utf8_closes_with_1007(frame: Frame):
    """A text message that is not UTF-8 (a stray byte, an encoded surrogate, a cut character)
    closes the socket with 1007 `Text frames must be UTF-8`."""
    frames = ClientFrames(max_frames_per_second=10, now=0.0)
    assert frames.received(frame, 0.0) is INVALID_TEXT
    assert (INVALID_TEXT.code, INVALID_TEXT.reason) == (1007, "Text frames must be UTF-8")


def test_fragmented_text_that_is_not_utf8_closes_with_1007():
    """A fragmented message is checked whole: its last fragment earns the 1007."""
    frames = ClientFrames(max_frames_per_second=10, now=0.0)
    assert frames.received(Frame(Opcode.TEXT, b"ok", fin=False), 0.0) is None
    assert frames.received(Frame(Opcode.CONT, b"\xff"), 0.0) is INVALID_TEXT


@pytest.mark.parametrize("fin", [True, False])
def test_binary_closes_with_1003_at_its_first_frame(fin: bool):
    """A binary message closes the socket with 1003 `Binary frames are not accepted`, at its
    first frame: its fragments are never gathered."""
    frames = ClientFrames(max_frames_per_second=10, now=0.0)
    assert frames.received(Frame(Opcode.BINARY, b"{}", fin=fin), 0.0) is BINARY_REFUSED
    assert (BINARY_REFUSED.code, BINARY_REFUSED.reason) == (1003, "Binary frames are not accepted")


def test_frames_over_the_budget_close_with_rate_limit():
    """Every frame, control frames too, spends the budget; the first one over it closes the
    socket with 1008 `Rate limit`, and the budget refills with time."""
    frames = ClientFrames(max_frames_per_second=2, now=0.0)
    assert frames.received(Frame(Opcode.PING, b""), 0.0) is None
    assert frames.received(Frame(Opcode.TEXT, b"a"), 0.0) == "a"
    assert frames.received(Frame(Opcode.TEXT, b"b"), 0.0) is RATE_LIMIT
    assert (RATE_LIMIT.code, RATE_LIMIT.reason) == (1008, "Rate limit")
    assert frames.received(Frame(Opcode.TEXT, b"c"), 0.5) == "c"


def test_rate_limit_is_judged_before_the_frame_means_anything():
    """A frame over the budget earns `Rate limit` whatever it holds, binary or broken text."""
    frames = ClientFrames(max_frames_per_second=1, now=0.0)
    assert frames.received(Frame(Opcode.PING, b""), 0.0) is None
    assert frames.received(Frame(Opcode.BINARY, b"x"), 0.0) is RATE_LIMIT
    assert frames.received(Frame(Opcode.TEXT, b"\xff"), 0.0) is RATE_LIMIT


def test_replies_are_exact():
    """Replies have the original's exact shape: data is a JSON-encoded string."""
    assert (
        subscribed_json("user:1") == b'{"event":"subscribed","data":"{\\"channel\\":\\"user:1\\"}"}'
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
