"""Upgrade-request rules of `bifrost/rules/admission.py`, checked without a server."""

from __future__ import annotations

import logging

import pytest

from bifrost.rules.admission import (
    REFUSAL_HEADROOM,
    Refusal,
    admission_refusal,
    closed_unanswered,
    hand_over_refusal,
    handshake_headers,
    invalid_header_refusal,
    library_refusal,
)

ORIGINS = frozenset({"https://app.example.com"})


def admission(**facts: object) -> Refusal | None:
    """The admission of a handshake that passes every check, but for the facts given."""
    defaults: dict[str, object] = {
        "origin": "https://app.example.com",
        "allowed_origins": ORIGINS,
        "stopping": False,
        "open_connections": 10,
        "max_connections": 10,
    }
    return admission_refusal(**{**defaults, **facts})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "facts",
    [
        {},
        {"origin": "https://app.example.com/"},
        {"origin": None},
        {"allowed_origins": frozenset(), "origin": "https://anywhere.example.org"},
    ],
)
def test_handshake_within_every_bound_is_admitted(facts: dict[str, object]):
    """An allowed origin (a trailing slash aside), no origin at all, or any origin when none
    are listed, from a running process at its connection limit, is let on."""
    assert admission(**facts) is None


def test_foreign_origin_is_refused_403_and_logged_escaped():
    """An origin outside the allowed ones gets 403 `Origin not allowed`, counted as `origin`
    and logged with the origin made printable."""
    assert admission(origin="https://evil.example.net\n\x1b") == Refusal(
        403,
        "Origin not allowed",
        metric_reason="origin",
        log="refused handshake from origin https://evil.example.net\\n\\x1b",
    )


def test_stopping_process_refuses_503():
    """A process shutting down answers 503, counted as `stopping`, so that the client goes to
    a live instance (an event stream hears it as a 200 that says when to try again)."""
    assert admission(stopping=True) == Refusal(
        503, "Shutting down, try another instance", metric_reason="stopping", try_elsewhere=True
    )


def test_full_process_refuses_503_and_closes_the_connection():
    """Past the connection limit a handshake gets 503, counted as `full`, logged as a warning,
    and its connection is closed once answered so that it stops counting as open."""
    assert admission(open_connections=11) == Refusal(
        503,
        "Too many connections, try another instance",
        metric_reason="full",
        log="refused handshake: 10 connections open",
        log_level=logging.WARNING,
        close_connection=True,
        try_elsewhere=True,
    )


def test_refusals_are_checked_origin_first_then_stopping_then_full():
    """A foreign origin is refused 403 whatever the process's state, and a stopping process
    says so before it says it is full."""
    foreign = admission(origin="https://evil.example.net", stopping=True, open_connections=99)
    assert foreign is not None and foreign.metric_reason == "origin"
    stopping = admission(stopping=True, open_connections=99)
    assert stopping is not None and stopping.metric_reason == "stopping"


@pytest.mark.parametrize(
    ("open_connections", "closed"),
    [(10 + REFUSAL_HEADROOM, False), (11 + REFUSAL_HEADROOM, True)],
)
def test_connection_past_the_headroom_is_closed_unanswered(open_connections: int, closed: bool):
    """A connection opened past the limit and the headroom kept to answer 503 is closed."""
    assert closed_unanswered(open_connections, max_connections=10) is closed


@pytest.mark.parametrize(
    ("content_length", "transfer_encoding"),
    [("1", False), ("00", False), (None, True), ("0", True)],
)
def test_upgrade_with_a_body_is_refused_400(content_length: str | None, transfer_encoding: bool):
    """An upgrade request announcing a body, by length or by transfer encoding, gets 400: the
    body would be read as frames."""
    assert hand_over_refusal(
        content_length=content_length, transfer_encoding=transfer_encoding, unsent_bytes=0
    ) == Refusal(400, "A websocket upgrade request has no body")


def test_upgrade_behind_unread_answers_is_refused_400():
    """An upgrade behind answers still unsent gets 400: its socket would start with writing
    paused, where the slow-consumer bound never fires."""
    assert hand_over_refusal(
        content_length=None, transfer_encoding=False, unsent_bytes=1
    ) == Refusal(400, "A websocket upgrade must not follow unread answers")


@pytest.mark.parametrize("content_length", [None, "0"])
def test_upgrade_without_body_or_backlog_is_handed_over(content_length: str | None):
    """No body (no length, or a length of 0) and nothing unsent: the connection can be taken."""
    assert (
        hand_over_refusal(content_length=content_length, transfer_encoding=False, unsent_bytes=0)
        is None
    )


def test_only_the_headers_the_handshake_reads_reach_the_library():
    """The library sees the headers it reads, whatever their case, and no others (a cookie
    in UTF-8 it would refuse)."""
    request = [
        ("Host", "x"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "k"),
        ("sec-websocket-version", "13"),
        ("Cookie", "name=ø"),
        ("Origin", "https://app.example.com"),
        ("Sec-WebSocket-Protocol", "p"),
        ("Sec-WebSocket-Extensions", "e"),
    ]
    assert handshake_headers(request) == [
        pair for pair in request if pair[0] not in {"Host", "Cookie"}
    ]


def test_header_the_library_refuses_gets_400_escaped():
    """A header the handshake reads holding a control character gets 400, the value escaped."""
    assert invalid_header_refusal("invalid Origin header: a\x1bb") == Refusal(
        400, "Failed to open a WebSocket connection: invalid Origin header: a\\x1bb"
    )


@pytest.mark.parametrize("version_header", ["Sec-WebSocket-Version", "sec-websocket-version"])
def test_refused_version_gets_426_naming_13(version_header: str):
    """The library's 400 for another (or no) `Sec-WebSocket-Version` becomes 426 Upgrade
    Required with `Upgrade: websocket` and `Sec-WebSocket-Version: 13` (RFC 6455 §4.2.2)."""
    body = "Failed to open a WebSocket connection: invalid Sec-WebSocket-Version header: 8.\n"
    assert library_refusal(
        status=400,
        body=body,
        reason_phrase="Bad Request",
        refused_header=version_header,
        upgrade=None,
    ) == Refusal(
        426,
        "Failed to open a WebSocket connection: invalid Sec-WebSocket-Version header: 8.",
        {"upgrade": "websocket", "sec-websocket-version": "13"},
    )


def test_request_that_is_no_upgrade_keeps_the_librarys_426_and_upgrade_header():
    """A request without `Upgrade: websocket` keeps the library's 426 and its `Upgrade` header,
    which says how to retry."""
    assert library_refusal(
        status=426,
        body="Failed to open a WebSocket connection: missing Upgrade header.\n",
        reason_phrase="Upgrade Required",
        refused_header="Upgrade",
        upgrade="websocket",
    ) == Refusal(
        426,
        "Failed to open a WebSocket connection: missing Upgrade header.",
        {"upgrade": "websocket"},
    )


def test_other_library_refusals_keep_its_status_and_an_escaped_reason():
    """Any other refusal keeps the library's status, its reason quoted with what does not
    print escaped, or its reason phrase when it gives no text."""
    assert library_refusal(
        status=400,
        body="invalid Sec-WebSocket-Key header: \x1b[31m\n",
        reason_phrase="Bad Request",
        refused_header="Sec-WebSocket-Key",
        upgrade=None,
    ) == Refusal(400, "invalid Sec-WebSocket-Key header: \\x1b[31m")
    assert library_refusal(
        status=400, body="", reason_phrase="Bad Request", refused_header=None, upgrade=None
    ) == Refusal(400, "Bad Request")
