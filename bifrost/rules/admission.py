"""Whether an upgrade request to `/subscribe` may become a websocket, and the answer if not.

No Sanic and no asyncio here: the subscribe blueprint and `bifrost.handshake` gather the facts
of the request and of the process (its origin, whether the process is stopping, how many
connections are open, whether a body follows, what is still unsent) and perform the answer,
so that every refusal's status, reason and headers is unit-tested without a server. The
`websockets` library still validates the RFC 6455 handshake itself (key, `Upgrade`,
`Connection`, version); `library_refusal` only says how its refusal is answered.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from bifrost.rules.text import printable

__all__ = [
    "HANDSHAKE_HEADERS",
    "REFUSAL_HEADROOM",
    "WEBSOCKET_VERSION",
    "Refusal",
    "admission_refusal",
    "closed_unanswered",
    "hand_over_refusal",
    "handshake_headers",
    "invalid_header_refusal",
    "library_refusal",
]

# The request headers the library reads to accept a handshake. Only these are handed to it:
# it refuses any value Sanic takes (a cookie in UTF-8 beyond Latin-1, control characters),
# and a header the handshake does not read must not make it fail.
HANDSHAKE_HEADERS = frozenset(
    {
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "origin",
    }
)
# The one version of the protocol spoken here: RFC 6455's.
WEBSOCKET_VERSION = "13"
# Connections held past BIFROST_MAX_CONNECTIONS to read their request and answer it 503;
# connections past these are closed unanswered.
REFUSAL_HEADROOM = 64


@dataclass(frozen=True, slots=True)
class Refusal:
    """Answer the upgrade request with this status and JSON `{"error": reason}`, not a 101."""

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    # The `reason` label of `bifrost_handshakes_refused_total`, for refusals an operator counts.
    metric_reason: str | None = None
    # What the log says of it, at `log_level`; None for refusals only the client hears of.
    log: str | None = None
    log_level: int = logging.INFO
    # Close the connection once answered rather than keep it alive, where it would go on
    # counting as open.
    close_connection: bool = False
    # The process cannot serve the subscriber now, but another (or this one later) can: an
    # event stream hears it as a 200 that says when to come back (`come_back_later`).
    try_elsewhere: bool = False


def admission_refusal(
    *,
    origin: str | None,
    allowed_origins: Collection[str],
    stopping: bool,
    open_connections: int,
    max_connections: int,
) -> Refusal | None:
    """Why a handshake is refused before it upgrades (a foreign origin, a stopping or a full
    process), or None to let it on; checked in that order."""
    if allowed_origins and origin and origin.rstrip("/") not in allowed_origins:
        return Refusal(
            403,
            "Origin not allowed",
            metric_reason="origin",
            log=f"refused handshake from origin {printable(origin)}",
        )
    if stopping:
        # Its sockets are being closed with 1012: the client must go to a live instance.
        return Refusal(
            503, "Shutting down, try another instance", metric_reason="stopping", try_elsewhere=True
        )
    if open_connections > max_connections:
        return Refusal(
            503,
            "Too many connections, try another instance",
            metric_reason="full",
            log=f"refused handshake: {max_connections} connections open",
            log_level=logging.WARNING,
            close_connection=True,
            try_elsewhere=True,
        )
    return None


def closed_unanswered(open_connections: int, max_connections: int) -> bool:
    """Whether a connection just opened is past the headroom kept to answer handshakes 503,
    and is closed at once: a few hundred silent ones would use up the file descriptors."""
    return open_connections > max_connections + REFUSAL_HEADROOM


def hand_over_refusal(
    *,
    content_length: str | None,
    transfer_encoding: bool,
    unsent_bytes: int,
    request: str = "A websocket upgrade",
) -> Refusal | None:
    """Why the request's connection cannot be handed over to a websocket (or an event stream,
    `request` naming it), or None.

    A body would be read as frames, or Sanic would try to read it after the hand-over. Unsent
    earlier answers mean a client that pipelined requests and never read them: taken over, the
    socket would start with Sanic's writing paused, and its slow-consumer bound never fire.
    """
    if (content_length or "0") != "0" or transfer_encoding:
        return Refusal(400, f"{request} request has no body")
    if unsent_bytes:
        return Refusal(400, f"{request} must not follow unread answers")
    return None


def handshake_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The request headers handed to the library: those it reads, and no others."""
    return [(name, value) for name, value in headers if name.lower() in HANDSHAKE_HEADERS]


def invalid_header_refusal(error: str) -> Refusal:
    """A header the handshake reads holds what the library refuses (a control character, text
    beyond Latin-1): 400, its value escaped."""
    return Refusal(400, printable(f"Failed to open a WebSocket connection: {error}"))


def library_refusal(
    *, status: int, body: str, reason_phrase: str, refused_header: str | None, upgrade: str | None
) -> Refusal:
    """The library's refusal of a handshake, with the headers that say how to retry.

    The library's reason quotes the header it refuses, as the client sent it. A request that
    is no upgrade keeps the library's 426 and its `Upgrade: websocket`. A version other than
    13, or none, the library refuses with a plain 400 that names no version; RFC 6455 §4.2.2
    wants the versions spoken said in `Sec-WebSocket-Version`, and 426 Upgrade Required tells
    the client that this version of the protocol would succeed.
    """
    reason = printable(body.strip() or reason_phrase)
    if refused_header is not None and refused_header.lower() == "sec-websocket-version":
        headers = {"upgrade": "websocket", "sec-websocket-version": WEBSOCKET_VERSION}
        return Refusal(426, reason, headers)
    return Refusal(status, reason, {} if upgrade is None else {"upgrade": upgrade})
