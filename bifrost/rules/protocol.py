"""The wire rules of `/subscribe`: what a client frame means and the exact bytes of each reply.

Pure functions and constants, no Sanic and no asyncio, so that every rule of the contract is
checked by unit tests without a server: `ClientFrames` decides what each frame a socket parses
comes to (a message, or the close it earns), `interpret_frame` what a text message asks; the
socket and the subscribe blueprint only carry out the decisions.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.frames import Frame, Opcode
from websockets.typing import BytesLike

from bifrost.rules.positions import Position, parse_since, since_problem
from bifrost.rules.ratelimit import FrameBudget

__all__ = [
    "AUTHENTICATION_TIMEOUT",
    "BINARY_REFUSED",
    "IDLE_TIMEOUT",
    "INVALID_TEXT",
    "NOT_AUTHORIZED",
    "PONG",
    "RATE_LIMIT",
    "SERVICE_RESTART",
    "SLOW_CONSUMER",
    "TRY_AGAIN_LATER",
    "Authenticate",
    "ClientFrames",
    "Close",
    "ErrorReply",
    "Ignore",
    "Pong",
    "channel_total_refusal",
    "error_reply",
    "interpret_frame",
    "subscribed_json",
    "text_frame",
]


@dataclass(frozen=True, slots=True)
class Close:
    """Close the socket with this code and reason."""

    code: int
    reason: str


NOT_AUTHORIZED = Close(1008, "Not Authorized")
AUTHENTICATION_TIMEOUT = Close(1008, "Authentication timeout")
IDLE_TIMEOUT = Close(1001, "Idle timeout")
SLOW_CONSUMER = Close(1008, "Slow consumer")
RATE_LIMIT = Close(1008, "Rate limit")
BINARY_REFUSED = Close(1003, "Binary frames are not accepted")
INVALID_TEXT = Close(1007, "Text frames must be UTF-8")
SERVICE_RESTART = Close(1012, "Service restart")
# The broker did not confirm a socket's channels in time: it must not believe it subscribed.
TRY_AGAIN_LATER = Close(1013, "Try again later")


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Verify this token and subscribe to the channels it grants; with `since`, the socket is
    positioned and recovers what it missed after those positions."""

    token: object
    since: dict[str, Position] | None = None


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer a client's ping."""


@dataclass(frozen=True, slots=True)
class Ignore:
    """A well-formed frame that asks nothing of the server."""


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """Tell the client its frame was malformed, and keep the socket open."""

    reason: str


class ClientFrames(FrameBudget):
    """What the frames one client sends come to: each counted against the socket's budget the
    moment it is parsed, fragments joined, and each whole message decoded as text.

    A socket feeds it every frame the parser yields and performs the answer; the parser itself
    answers control frames and bounds a message's size. It is the socket's budget itself
    rather than holding one, so that a socket costs no more objects than before (about 4 KiB
    each, as `bench/` counts them).
    """

    __slots__ = ("_partial",)

    def __init__(self, max_frames_per_second: float, now: float) -> None:
        super().__init__(max_frames_per_second, now)
        self._partial: list[BytesLike] | None = None

    def received(self, frame: Frame, now: float) -> str | Close | None:
        """A whole text message; the close this frame earns (`RATE_LIMIT` over the budget,
        `BINARY_REFUSED` for a binary message, `INVALID_TEXT` for text that is not UTF-8); or
        None when the frame completes no message (a control frame, a fragment before the last).
        """
        if not self.spend(now):
            return RATE_LIMIT
        opcode = frame.opcode
        if opcode is Opcode.TEXT:
            if not frame.fin:
                self._partial = [frame.data]
                return None
            payload = bytes(frame.data)
        elif opcode is Opcode.CONT:
            if self._partial is None:
                return None  # the parser refuses a continuation without a start
            self._partial.append(frame.data)
            if not frame.fin:
                return None
            payload = b"".join(self._partial)
            self._partial = None
        elif opcode is Opcode.BINARY:
            # Refused at its first frame: its fragments are never gathered only to be dropped.
            return BINARY_REFUSED
        else:
            return None
        try:
            return payload.decode()
        except UnicodeDecodeError:
            return INVALID_TEXT


Decision = Authenticate | Pong | Ignore | ErrorReply


def interpret_frame(frame: str) -> Decision:
    """Decide what one client text message asks for."""
    try:
        parsed: Any = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return ErrorReply("frame is not valid JSON")
    if not isinstance(parsed, dict):
        return ErrorReply("frame must be a JSON object")
    event = parsed.get("event")
    if not isinstance(event, str):
        return ErrorReply("frame must have a string event")
    if event == "authenticate":
        if "since" not in parsed:
            return Authenticate(parsed.get("data"))
        problem = since_problem(parsed["since"])
        if problem is not None:
            return ErrorReply(problem)
        return Authenticate(parsed.get("data"), parse_since(parsed["since"]))
    if event == "ping":
        return Pong()
    return Ignore()


def channel_total_refusal(
    held: Collection[str], granted: Sequence[str], max_channels: int
) -> ErrorReply | None:
    """Why an authenticate would take a socket over `max_channels` in all, or None.

    Each token is bounded by itself; this bounds what a socket gathers through repeated
    authenticates. Such an authenticate is refused whole, with an error the socket stays open
    after, as Centrifugo and Pusher refuse a subscription past their channel limit: the token
    is valid, and the channels the socket already hears are its own. A channel the socket
    already hears counts once, so re-sending a token (a refresh) is never refused.
    """
    total = len(held) + sum(1 for channel in granted if channel not in held)
    if total <= max_channels:
        return None
    return ErrorReply(
        f"a socket may hear at most {max_channels} channels; this authenticate would make {total}"
    )


def text_frame(payload: bytes) -> bytes:
    """The bytes of one unmasked server text frame carrying `payload`, ready for the transport."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])


PONG = text_frame(b'{"event":"pong"}')


def subscribed_json(channel: str) -> bytes:
    """The `subscribed` frame's JSON, whose data is a JSON-encoded string as the original
    sent it."""
    data = orjson.dumps({"channel": channel}).decode()
    return orjson.dumps({"event": "subscribed", "data": data})


def error_reply(reason: str) -> bytes:
    """The `error` frame, its data a JSON-encoded string like every reply of the service."""
    data = orjson.dumps({"error": reason}).decode()
    return text_frame(orjson.dumps({"event": "error", "data": data}))
