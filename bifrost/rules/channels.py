"""What a channel name may be, the one rule the tokens, the playground and the clients apply.

A name is any text of 1 to 255 characters that UTF-8 can carry: it becomes a Redis channel, a
registry key and a line of the log, and a client that signs a name the server would refuse
learns it where it signs, not from a closed socket.
"""

from __future__ import annotations

from bifrost.rules.text import NOT_UTF8, is_utf8_text

__all__ = ["MAX_CHANNEL_NAME_LENGTH", "NOT_A_NAME", "channel_name", "channel_name_problem"]

MAX_CHANNEL_NAME_LENGTH = 255
NOT_A_NAME = f"must be a string of 1 to {MAX_CHANNEL_NAME_LENGTH} characters"


def channel_name_problem(value: object) -> str | None:
    """What is wrong with `value` as a channel name (`NOT_A_NAME` or `NOT_UTF8`), or None."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CHANNEL_NAME_LENGTH:
        return NOT_A_NAME
    if not is_utf8_text(value):
        return NOT_UTF8
    return None


def channel_name(value: object) -> str:
    """`value`, a good channel name; otherwise ValueError saying what is wrong with it."""
    problem = channel_name_problem(value)
    if problem is not None or not isinstance(value, str):
        raise ValueError(f"channel {problem}")
    return value
