"""The wire rules of server-sent events on `/subscribe`: which requests ask for a stream, where
their token is, and the exact bytes of the answer's head and of each event.

No Sanic and no asyncio here. An event stream carries what a positioned websocket would be
sent, each frame's JSON as one event of the default type (`data:`), so that the browser's
`es.onmessage = (m) => JSON.parse(m.data)` handles it as the README's websocket code does.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "COMMENT",
    "EVENT_STREAM",
    "RETRY_MS",
    "answer_headers",
    "closing_comment",
    "come_back_later",
    "cors_headers",
    "event",
    "id_event",
    "response_head",
    "retry_field",
    "stream_token",
    "wants_event_stream",
]

EVENT_STREAM = "text/event-stream"
# The `retry:` a stream announces: how long the browser waits before it reconnects after the
# stream ends. Each stream picks its own in this range, so that the reconnects of a deploy's
# thousands of streams spread over two seconds instead of arriving at once.
RETRY_MS = (1000, 3000)
# What keeps a quiet stream alive every BIFROST_PING_INTERVAL: a comment line, which the
# browser ignores, and whose write fails once the peer is gone.
COMMENT = b":\n\n"
# Headers of every event-stream answer: proxies must neither cache nor buffer it (nginx reads
# X-Accel-Buffering), and the browser's EventSource wants this type.
STREAM_HEADERS = {
    "content-type": EVENT_STREAM,
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}


def wants_event_stream(accept: str | None, upgrade: str | None) -> bool:
    """Whether a `GET /subscribe` asks for an event stream: `Accept` names
    `text/event-stream`, and it is no websocket upgrade (which wins when both come)."""
    if upgrade or not accept:
        return False
    return any(
        media.split(";", 1)[0].strip().lower() == EVENT_STREAM for media in accept.split(",")
    )


def stream_token(query_token: str | None, authorization: str | None) -> str | None:
    """The token of a stream request: `Authorization: Bearer <jwt>` (what a server or `curl`
    sends), else `?token=` (what EventSource can send); None when neither has one."""
    if authorization is not None:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return query_token or None


def cors_headers(origin: str | None, allowed_origins: frozenset[str]) -> dict[str, str]:
    """What lets a page of another origin read the stream: EventSource is bound by CORS, where
    a websocket is not. The origin was admitted already (`bifrost.rules.admission`)."""
    if origin is None:
        return {}
    if not allowed_origins:
        return {"access-control-allow-origin": "*"}
    return {"access-control-allow-origin": origin, "vary": "origin"}


def answer_headers(cors: Mapping[str, str]) -> dict[str, str]:
    """The headers of an event-stream answer, the stream itself or a come-back-later one."""
    return {**STREAM_HEADERS, **cors}


def response_head(cors: Mapping[str, str], retry_ms: int) -> bytes:
    """The bytes that open a stream: a 200 whose body runs until the connection closes (no
    length, no chunks: nothing to frame per event, and no connection to reuse after it), then
    the `retry:` field, which needs no event to take effect."""
    lines = ["HTTP/1.1 200 OK", *(f"{k}: {v}" for k, v in answer_headers(cors).items())]
    lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + retry_field(retry_ms)


def retry_field(retry_ms: int) -> bytes:
    return b"retry: %d\n\n" % retry_ms


def come_back_later(reason: str, retry_ms: int) -> bytes:
    """The body of a stream that a full or stopping process ends at once: EventSource gives up
    for good on any status but 200, so it is a 200 that says when to try again (elsewhere, or
    later), with the reason as a comment for a person reading it with `curl`."""
    return retry_field(retry_ms) + _comment(reason)


def closing_comment(reason: str) -> bytes:
    """The last bytes of a stream the server ends (`Service restart`, `Try again later`): a
    comment the browser ignores before it reconnects, and a person reads."""
    return _comment(reason)


def event(data: bytes) -> bytes:
    """An event of the default type carrying one frame's JSON, with no `id:`: the browser keeps
    the last id it was given."""
    return b"data: " + _data_lines(data) + b"\n\n"


def id_event(data: bytes, event_id: str) -> bytes:
    """An event with the id of every position of the stream after it."""
    return b"id: " + event_id.encode() + b"\ndata: " + _data_lines(data) + b"\n\n"


def _data_lines(data: bytes) -> bytes:
    """JSON as one `data:` field; JSON with line breaks (never Bifröst's own, which orjson
    writes on one line) as one field a line, which the browser joins with line breaks again."""
    if b"\n" not in data and b"\r" not in data:
        return data
    return b"\ndata: ".join(data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"))


def _comment(text: str) -> bytes:
    """A comment line; line breaks in the text would end it, so they become spaces."""
    return b": " + " ".join(text.splitlines()).encode() + b"\n\n"
