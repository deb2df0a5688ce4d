"""Token rules of `bifrost/rules/tokens.py`, checked without a server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import jwt
import pytest

from bifrost.rules.tokens import BAD_SIGNATURE, Rejection, TokenRejected, TokenVerifier

SECRET = "u" * 64


@contextmanager
def rejected(kind: Rejection, match: str | None = None) -> Iterator[None]:
    """The block raises TokenRejected of `kind`, its reason matching `match`."""
    with pytest.raises(TokenRejected, match=match) as caught:
        yield
    assert caught.value.kind is kind, f"{caught.value.kind}: {caught.value}"


def verifier(**options: object) -> TokenVerifier:
    return TokenVerifier([SECRET], **options)  # type: ignore[arg-type]


def sign(claims: dict, algorithm: str = "HS512", secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm)


def test_subscribe_channels_in_order_each_once():
    """Channels come back in the token's order with duplicates removed."""
    token = sign({"channels": ["b", "a", "b", "c"]})
    assert verifier().subscribe_channels(token) == ["b", "a", "c"]


def test_pinned_algorithms_only():
    """A token in an algorithm outside the configured list is rejected; one inside is accepted."""
    token = sign({"channels": ["a"]}, "HS256")
    with rejected(Rejection.ALGORITHM, "algorithm"):
        verifier().subscribe_channels(token)
    assert verifier(algorithms=["HS256", "HS512"]).subscribe_channels(token) == ["a"]


def test_alg_none_is_rejected():
    """An unsigned token (`alg: none`) is never accepted."""
    token = jwt.encode({"channels": ["a"]}, None, "none")
    with rejected(Rejection.ALGORITHM):
        verifier().subscribe_channels(token)


def test_wrong_secret_is_bad_signature():
    """A token signed with another secret is refused as `Bad signature`."""
    with rejected(Rejection.SIGNATURE, f"^{BAD_SIGNATURE}$"):
        verifier().subscribe_channels(sign({"channels": ["a"]}, secret="v" * 64))


def test_time_claims_are_honoured():
    """`exp` in the past and `nbf` in the future are refused."""
    with rejected(Rejection.EXPIRED, "expired"):
        verifier().subscribe_channels(sign({"channels": ["a"], "exp": time.time() - 60}))
    with rejected(Rejection.NOT_YET_VALID, "not valid yet"):
        verifier().subscribe_channels(sign({"channels": ["a"], "nbf": time.time() + 60}))


def test_broadcast_requires_exp_unless_configured():
    """A broadcast token must carry `exp` unless BIFROST_REQUIRE_EXP=false."""
    token = sign({"channel": "a", "message": {"event": "e"}})
    with rejected(Rejection.CLAIMS, "exp"):
        verifier().broadcast_order(token)
    assert verifier(require_exp=False).broadcast_order(token).channels == ("a",)


def test_kinds_of_token_do_not_stand_in_for_each_other():
    """A subscribe token cannot broadcast and a broadcast token cannot subscribe."""
    exp = time.time() + 60
    with rejected(Rejection.CLAIMS):
        verifier().broadcast_order(sign({"channels": ["a"], "exp": exp}))
    with rejected(Rejection.CLAIMS):
        verifier().subscribe_channels(
            sign({"channels": ["a"], "message": {"event": "e"}, "exp": exp})
        )


def test_broadcast_order_keeps_message_as_sent():
    """The message object is returned untouched, keys in order."""
    message = {"event": "e", "data": '{"x":1}', "z": [1, {"y": None}]}
    order = verifier().broadcast_order(
        sign({"channels": ["a", "b", "a"], "message": message, "exp": time.time() + 60})
    )
    assert order.channels == ("a", "b")
    assert list(order.message.items()) == list(message.items())
    assert order.payload == b'{"event":"e","data":"{\\"x\\":1}","z":[1,{"y":null}]}'


@pytest.mark.parametrize(
    "channels",
    [[], "a", ["a", 3], [""], ["x" * 256], [f"c{i}" for i in range(101)], None],
)
def test_channel_lists_are_checked(channels):
    """Channel lists must be non-empty, at most 100, of names of 1 to 255 characters."""
    with rejected(Rejection.CLAIMS):
        verifier().subscribe_channels(sign({"channels": channels}))


@pytest.mark.parametrize(
    ("claims", "refused"),
    [
        ({"channel": "\udfff"}, "channel holds a lone UTF-16 surrogate"),
        ({"channels": ["a", "\ud800"]}, "a channel of channels holds a lone UTF-16 surrogate"),
        ({"channel": "a", "message": {"event": "e", "data": {"k\ud83d": 1}}}, "message holds"),
        ({"channel": "a", "message": {"event": "e", "n": 2**70, "d": ["\ud83d"]}}, "message holds"),
    ],
)
def test_text_utf8_cannot_carry_is_refused(claims, refused):
    """A lone surrogate in a channel name or anywhere in the message refuses the token."""
    token = sign({"message": {"event": "e"}, **claims, "exp": time.time() + 60})
    with rejected(Rejection.CLAIMS, f"^{refused}"):
        verifier().broadcast_order(token)
    if "channels" in claims:
        with rejected(Rejection.CLAIMS, f"^{refused}"):
            verifier().subscribe_channels(sign(claims))


def test_reasons_are_printable_and_short():
    """A reason quoting the token's unsigned header is one short line, whatever it holds."""
    token = jwt.encode({"channels": ["a"]}, SECRET, "HS512", headers={"crit": ["x\n\x1b" * 500]})
    with pytest.raises(TokenRejected) as refused:
        verifier().subscribe_channels(token)
    assert refused.value.kind is Rejection.MALFORMED
    reason = str(refused.value)
    assert reason.startswith("invalid token: Unsupported critical extension: x\\n\\x1b")
    assert reason.isprintable() and len(reason) == 200
    with rejected(Rejection.MALFORMED, r"^invalid token: a JWT is ASCII text$"):
        verifier().subscribe_channels("\ud800.e30.c2ln")


@pytest.mark.parametrize(
    ("token", "kind"),
    [
        ("", Rejection.MALFORMED),
        (42, Rejection.MALFORMED),
        ("a.b.c", Rejection.MALFORMED),
        (sign({"channels": ["a"]}, "HS256", "v" * 64), Rejection.ALGORITHM),
        (sign({"channels": ["a"], "exp": time.time() - 60}, secret="v" * 64), Rejection.SIGNATURE),
        (sign({"channels": ["a"], "exp": "soon"}), Rejection.MALFORMED),
        (sign({"channels": ["x" * 256]}), Rejection.CLAIMS),
    ],
)
def test_each_rejection_says_its_kind(token, kind):
    """Every refusal carries one of a few kinds, whatever the token holds."""
    with rejected(kind):
        verifier().subscribe_channels(token)


def sign_payload(payload: bytes) -> str:
    """A token whose payload is these bytes exactly, signed as any other."""
    return jwt.PyJWS().encode(payload, SECRET, "HS512")


@pytest.mark.parametrize(
    ("payload", "channels"),
    [
        (b'{"channels": ["a"], "n": 1180591620717411303424}', ["a"]),  # past 64 bits
        (b'{"channels": ["a"], "f": NaN}', ["a"]),  # JSON's extension pyjwt reads
        (b'{"channels": ["a"], "channels": ["b"]}', ["b"]),  # the last one, as pyjwt reads it
        ('{"channels": ["a"]}'.encode("utf-16"), ["a"]),  # another encoding pyjwt detects
    ],
)
def test_payloads_are_read_as_pyjwt_reads_them(payload, channels):
    """The claims are read with orjson, and what orjson refuses is read as pyjwt reads it."""
    assert verifier().subscribe_channels(sign_payload(payload)) == channels


@pytest.mark.parametrize("payload", [b"[1]", b'"a"', b"{", b"\xff"])
def test_payloads_that_are_no_object_are_malformed(payload):
    with rejected(Rejection.MALFORMED, "^invalid token: Invalid payload string"):
        verifier().subscribe_channels(sign_payload(payload))
