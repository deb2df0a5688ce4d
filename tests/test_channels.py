"""The channel-name rule of `bifrost/rules/channels.py`, and every user of it agreeing."""

from __future__ import annotations

import re
import time

import jwt
import pytest

from bifrost.blueprints.pages import PlaygroundRefusal, playground_broadcast
from bifrost.client import BifrostClient, token_for
from bifrost.rules.channels import (
    MAX_CHANNEL_NAME_LENGTH,
    NOT_A_NAME,
    channel_name,
    channel_name_problem,
)
from bifrost.rules.settings import Settings
from bifrost.rules.text import NOT_UTF8
from bifrost.rules.tokens import TokenRejected, TokenVerifier

SECRET = "c" * 64
GOOD = ["a", "user:1", "ü" * MAX_CHANNEL_NAME_LENGTH, "🙂 room", " ", "\x00"]
BAD = [
    ("", NOT_A_NAME),
    ("x" * (MAX_CHANNEL_NAME_LENGTH + 1), NOT_A_NAME),
    (3, NOT_A_NAME),
    (None, NOT_A_NAME),
    (["a"], NOT_A_NAME),
    ("cut \ud83d", NOT_UTF8),
]


def refusal(problem: str) -> str:
    """The pattern of the one refusal every user of the rule gives for `problem`."""
    return f"^channel {re.escape(problem)}$"


def test_a_name_is_utf8_text_of_1_to_255_characters():
    """Names of 1 to 255 characters that UTF-8 can carry are good; others say what is wrong."""
    assert MAX_CHANNEL_NAME_LENGTH == 255
    for name in GOOD:
        assert channel_name_problem(name) is None
        assert channel_name(name) == name
    for value, problem in BAD:
        assert channel_name_problem(value) == problem
        with pytest.raises(ValueError, match=refusal(problem)):
            channel_name(value)


def test_sdk_tokens_and_playground_accept_the_same_names():
    """The SDK, the token rules and the playground accept exactly the names the rule accepts."""
    verifier = TokenVerifier([SECRET], require_exp=False)
    settings = Settings(jwt_secret=SECRET)
    client = BifrostClient("http://127.0.0.1:1", SECRET)
    for name in GOOD:
        assert verifier.subscribe_channels(token_for([name], secret=SECRET)) == [name]
        assert verifier.broadcast_order(client.broadcast_token(name, "e")).channels == (name,)
        played = playground_broadcast(settings, {"channel": name, "event": "e"})
        assert jwt.decode(played, SECRET, ["HS512"])["channel"] == name
    for value, problem in BAD:
        with pytest.raises(ValueError, match=refusal(problem)):
            token_for([value], secret=SECRET)  # type: ignore[list-item]
        with pytest.raises(ValueError, match=refusal(problem)):
            client.broadcast_token([value], "e")  # type: ignore[list-item]
        with pytest.raises(PlaygroundRefusal, match=refusal(problem)):
            playground_broadcast(settings, {"channel": value, "event": "e"})
        signed = {"message": {"event": "e"}, "channel": value, "exp": time.time() + 60}
        with pytest.raises(TokenRejected, match=refusal(problem)):
            verifier.broadcast_order(jwt.encode(signed, SECRET, "HS512"))
        with pytest.raises(TokenRejected, match=re.escape(problem)):
            verifier.subscribe_channels(jwt.encode({"channels": [value]}, SECRET, "HS512"))
