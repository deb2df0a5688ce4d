"""The first protocol of every connection: a websocket upgrade goes straight to its socket.

At a deploy every browser reconnects at once, and what a connection costs before it becomes a
websocket decides how long they wait: Sanic's HTTP cycle (its protocol, connection task,
request, router, middleware and signals) costs more than the socket's own work of
authenticating and recovering. `FrontProtocol` reads the connection's first request head
itself, with httptools (which Sanic's own dependencies bring). A plain upgrade to
`/subscribe` that the admission rules let on and the `websockets` library accepts gets the
library's 101 and its `Subscriber` at once, as `bifrost.handshake.upgrade` would give it.

Everything else (any other request, an event stream, a refusal, an odd byte, a head not read
within the request deadline) is handed, with the bytes read so far, to Sanic's protocol
(`BoundedHttpProtocol`), which answers it as if it had read it from the start: every refusal
keeps its one code path, and the request deadline still counts from the connection's opening.
The connection ceiling is checked here, when a connection is opened.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import Any, cast

import httptools
from sanic import Sanic
from sanic.http import Http
from websockets.exceptions import InvalidHeader

from bifrost import metrics
from bifrost.bounded_http import BoundedHttpProtocol, count_open
from bifrost.handshake import accept_upgrade, switch_protocol
from bifrost.rules.admission import REFUSAL_HEADROOM, admission_refusal, closed_unanswered
from bifrost.rules.event_stream import wants_event_stream
from bifrost.service import context_of, service_of

__all__ = ["FrontProtocol"]

logger = logging.getLogger("bifrost.connections")

SUBSCRIBE_PATH = b"/subscribe"
# Headers that make the request one Sanic must read: a body, or an answer it waits for.
SANIC_ONLY_HEADERS = frozenset({"content-length", "transfer-encoding", "expect"})


class FrontProtocol(asyncio.Protocol):
    """Reads a connection's first request head and serves it as a websocket, or hands the
    connection to Sanic's HTTP protocol."""

    __slots__ = (
        "_deadline",
        "_head",
        "_headers",
        "_parser",
        "_sanic_kwargs",
        "_transport",
        "_url",
        "opened_at",
    )

    def __init__(self, **sanic_kwargs: Any) -> None:
        # Sanic's arguments for its protocol (loop, app, connection set, …), kept for the
        # hand-over.
        self._sanic_kwargs = sanic_kwargs
        self._transport: asyncio.Transport | None = None
        self._head = bytearray()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._parser = httptools.HttpRequestParser(self)
        self._deadline: asyncio.TimerHandle | None = None
        self.opened_at = monotonic()

    @property
    def app(self) -> Sanic[Any, Any]:
        app: Sanic[Any, Any] = self._sanic_kwargs["app"]
        return app

    @property
    def connections(self) -> set[Any]:
        """Sanic's set of the worker's open HTTP connections, which its shutdown closes."""
        connections: set[Any] = self._sanic_kwargs["connections"]
        return connections

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Typed as any transport; Sanic listens on TCP (uvloop's transports are no subclass).
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self.connections.add(self)
        service = service_of(self.app)
        max_connections = service.settings.max_connections
        if closed_unanswered(count_open(self.connections, service.registry), max_connections):
            ceiling = max_connections + REFUSAL_HEADROOM
            logger.warning("closed connection unanswered: %d connections open", ceiling)
            metrics.http_connection_closed("overflow")
            transport.close()
            return
        timeout = self.app.config.REQUEST_TIMEOUT
        self._deadline = asyncio.get_running_loop().call_later(timeout, self._to_sanic)

    def data_received(self, data: bytes) -> None:
        self._head += data
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgrade_or_hand_over()
        except httptools.HttpParserError:
            self._to_sanic()
        else:
            if len(self._head) >= Http.HEADER_MAX_SIZE or self._parser.get_method() != b"GET":
                self._to_sanic()

    def connection_lost(self, exc: Exception | None) -> None:
        self._let_go()

    # -- httptools' callbacks ------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        # A head that is no upgrade is complete without raising HttpParserUpgrade.
        if not self._parser.should_upgrade():
            raise httptools.HttpParserError("not an upgrade")

    # -- what Sanic's shutdown asks of each connection in its set --------------------------

    def close_if_idle(self) -> bool:
        """No request is read yet: close the connection, as Sanic does an idle one."""
        if self._transport is not None:
            self._transport.close()
        return True

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- the two ways out --------------------------------------------------------------------

    def _upgrade_or_hand_over(self) -> None:
        """Serve a plain, admitted websocket upgrade of `/subscribe`; hand anything else on."""
        transport = self._transport
        head_end = self._head.find(b"\r\n\r\n") + 4
        path = self._url.partition(b"?")[0]
        if (
            transport is None
            or head_end < 4
            # A head past Sanic's header limit is Sanic's to refuse (413), as it always was.
            or head_end - 4 >= Http.HEADER_MAX_SIZE
            or path != SUBSCRIBE_PATH
            or self._parser.get_http_version() != "1.1"
            or not self._head[:head_end].isascii()
        ):
            return self._to_sanic()
        headers = [(name.decode(), value.decode()) for name, value in self._headers]
        # A header named twice counts by its first value, as Sanic's request reads it.
        named: dict[str, str] = {}
        for name, value in headers:
            named.setdefault(name.lower(), value)
        if not SANIC_ONLY_HEADERS.isdisjoint(named) or wants_event_stream(
            named.get("accept"), named.get("upgrade")
        ):
            return self._to_sanic()
        service = service_of(self.app)
        settings = service.settings
        refusal = admission_refusal(
            origin=named.get("origin"),
            allowed_origins=settings.allowed_origins,
            stopping=service.stopping.is_set(),
            open_connections=count_open(self.connections, service.registry),
            max_connections=settings.max_connections,
        )
        if refusal is not None:
            return self._to_sanic()
        try:
            ws, answer = accept_upgrade(path.decode(), headers, settings.max_frame_bytes)
        except InvalidHeader:
            return self._to_sanic()
        if answer.status_code != 101:
            return self._to_sanic()
        subscriptions = context_of(self.app).subscriptions
        assert subscriptions is not None, "made when the worker's server starts"
        self._let_go()
        unread = bytes(self._head[head_end:])
        switch_protocol(
            transport, answer.serialize(), lambda t: subscriptions.accept(t, ws), unread
        )

    def _to_sanic(self) -> None:
        """Give the connection, and what was read of it, to Sanic's HTTP protocol."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._let_go()
        sanic = BoundedHttpProtocol(opened_at=self.opened_at, **self._sanic_kwargs)
        transport.set_protocol(sanic)
        # Sanic leaves HttpProtocol's methods unannotated.
        sanic.connection_made(transport)  # type: ignore[no-untyped-call]
        if self._head:
            sanic.data_received(bytes(self._head))

    def _let_go(self) -> None:
        """The connection is no longer this protocol's: out of Sanic's set, no deadline."""
        self.connections.discard(self)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._transport = None
