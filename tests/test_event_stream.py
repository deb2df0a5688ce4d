"""The wire rules of event streams, `bifrost/rules/event_stream.py`: which requests ask for a
stream, where the token is, and the exact bytes a client reads."""

from __future__ import annotations

import pytest

from bifrost.rules.event_stream import (
    COMMENT,
    closing_comment,
    come_back_later,
    cors_headers,
    event,
    id_event,
    response_head,
    stream_token,
    wants_event_stream,
)


@pytest.mark.parametrize(
    ("accept", "upgrade", "wanted"),
    [
        ("text/event-stream", None, True),
        ("Text/Event-Stream; charset=utf-8", None, True),
        ("application/json, text/event-stream;q=0.9", None, True),
        ("*/*", None, False),
        ("text/html", None, False),
        (None, None, False),
        ("text/event-stream", "websocket", False),
    ],
)
def test_a_stream_is_asked_for_by_accept_and_a_websocket_upgrade_wins(
    accept: str | None, upgrade: str | None, wanted: bool
):
    """EventSource and `curl -H 'Accept: text/event-stream'` get a stream; a plain GET does
    not (it gets the websocket handshake's 426), and an upgrade is a websocket."""
    assert wants_event_stream(accept, upgrade) is wanted


@pytest.mark.parametrize(
    ("query", "authorization", "token"),
    [
        ("q", None, "q"),
        (None, "Bearer h", "h"),
        ("q", "bearer  h ", "h"),
        ("q", "Basic xyz", "q"),
        (None, "Bearer ", None),
        ("", None, None),
        (None, None, None),
    ],
)
def test_the_token_comes_from_the_bearer_header_or_the_query(
    query: str | None, authorization: str | None, token: str | None
):
    assert stream_token(query, authorization) == token


def test_the_head_opens_an_uncached_unbuffered_stream_and_announces_its_retry():
    """200, the stream's type, no caching nor proxy buffering, a body that runs until the
    connection closes, then `retry:` before any event."""
    head = response_head({}, 1500)
    status, _, rest = head.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status == b"HTTP/1.1 200 OK"
    assert sorted(headers.split(b"\r\n")) == [
        b"cache-control: no-cache",
        b"connection: close",
        b"content-type: text/event-stream",
        b"x-accel-buffering: no",
    ]
    assert body == b"retry: 1500\n\n"


def test_a_page_of_another_origin_may_read_the_stream():
    """EventSource is bound by CORS: any origin when none are listed, else the admitted one."""
    assert cors_headers(None, frozenset()) == {}
    assert cors_headers("https://a.example", frozenset()) == {"access-control-allow-origin": "*"}
    assert cors_headers("https://a.example", frozenset({"https://a.example"})) == {
        "access-control-allow-origin": "https://a.example",
        "vary": "origin",
    }
    assert b"access-control-allow-origin: *\r\n" in response_head(
        cors_headers("https://a.example", frozenset()), 1000
    )


def test_events_carry_the_frames_json_as_data():
    """One event of the default type per frame, its JSON as `data:`; `id:` when it moves."""
    assert event(b'{"event":"e","data":1}') == b'data: {"event":"e","data":1}\n\n'
    assert id_event(b'{"event":"e"}', "AAAAAAAA.e.1") == (
        b'id: AAAAAAAA.e.1\ndata: {"event":"e"}\n\n'
    )


def test_json_with_line_breaks_is_one_data_field_a_line():
    """The browser joins `data:` fields with line breaks: the JSON reads back the same."""
    assert event(b'{"a":\n1,\r\n"b":\r2}') == b'data: {"a":\ndata: 1,\ndata: "b":\ndata: 2}\n\n'


def test_a_full_or_stopping_process_says_when_to_come_back():
    """The body of the 200 that ends at once: `retry:` and the reason as a comment."""
    assert come_back_later("Shutting down, try another instance", 2000) == (
        b"retry: 2000\n\n: Shutting down, try another instance\n\n"
    )


def test_comments_stay_on_one_line():
    assert closing_comment("Service restart") == b": Service restart\n\n"
    assert closing_comment("two\nlines\r\nhere") == b": two lines here\n\n"
    assert COMMENT == b":\n\n"
