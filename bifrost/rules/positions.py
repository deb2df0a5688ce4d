"""Positions: where a message stands in a channel's stream, and what a client's `since` says.

Apart from `bifrost.rules.history` so that the frame rules (`bifrost.rules.protocol`) can
check a `since` without depending on the recovery rules, which build frames with them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from bifrost.rules.text import printable

__all__ = [
    "EPOCH_LENGTH",
    "MessagePositions",
    "Position",
    "new_epoch",
    "parse_since",
    "since_problem",
]

# An epoch is this many URL-safe characters: never a space (the Redis envelope separates
# positions with spaces), and unguessable enough that two streams never share one.
EPOCH_LENGTH = 16
# A `since` epoch longer than this was not made by Bifröst: refused rather than carried about.
MAX_EPOCH_LENGTH = 64


@dataclass(frozen=True, slots=True)
class Position:
    """Where a message stands in a channel's stream."""

    epoch: str
    offset: int


# A message's position in each channel it was broadcast to, in the broadcast's order of
# channels: the same tuple wherever the message is seen (live, or read back from a stream), so
# that it also names the message.
MessagePositions = tuple[tuple[str, Position], ...]


def new_epoch() -> str:
    """A fresh epoch for a stream that starts afresh."""
    return secrets.token_urlsafe(12)[:EPOCH_LENGTH]


def since_problem(since: object) -> str | None:
    """Why `since` is not an object of positions, or None when it is."""
    if not isinstance(since, dict):
        return "since must be an object mapping channels to positions"
    for channel, position in since.items():
        if not isinstance(position, dict) or set(position) != {"epoch", "offset"}:
            shape = '{"epoch": <string>, "offset": <number>}'
            return f"since for {printable(channel)!r} must be {shape}"
        epoch, offset = position["epoch"], position["offset"]
        if not isinstance(epoch, str) or len(epoch) > MAX_EPOCH_LENGTH:
            return f"since for {printable(channel)!r}: epoch must be a string of Bifröst's"
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            return f"since for {printable(channel)!r}: offset must be a whole number of 0 or more"
    return None


def parse_since(since: dict[str, Any]) -> dict[str, Position]:
    """The positions of a `since` that `since_problem` accepted."""
    return {
        channel: Position(position["epoch"], position["offset"])
        for channel, position in since.items()
    }
