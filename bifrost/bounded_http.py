"""Sanic's HTTP/1.1 protocol, with a deadline per request counted from its readiness.

Sanic measures its request timeout from the last chunk received, so a client sending a header
line every few seconds (a slowloris) is never cut; and the connections it holds before they
become websockets count against no limit, so a few hundred silent ones would use up a worker's
file descriptors. `BoundedHttpProtocol` measures the request's time from the moment the
connection is ready for it (opened, or its previous answer sent) until its head and body are
read. Connections are first read by `bifrost.front.FrontProtocol`, which closes at once
those opened past the process's limit plus the headroom kept to answer them 503
(`bifrost.blueprints.subscribe.admit_handshake` answers) and hands every request it does not
serve itself to this protocol. Signals such as `http.lifecycle.begin` see no transport: all
they could do at a deadline is cancel the connection's task, which Sanic answers 500 in the
middle of a request.
"""

from __future__ import annotations

from collections.abc import Collection
from time import monotonic
from typing import Any, cast

from sanic import Request
from sanic.exceptions import RequestTimeout
from sanic.http import Http, Stage
from sanic.server import HttpProtocol

from bifrost import metrics
from bifrost.rules.registry import ChannelRegistry
from bifrost.service import service_of

__all__ = ["BoundedHttpProtocol", "close_after_answer", "count_open", "open_connections"]


class DeadlineHttp(Http):
    """Sanic's HTTP/1.1 state machine, telling its protocol when each request cycle begins."""

    __slots__ = ()

    def init_for_request(self) -> None:
        # Sanic leaves Http's methods unannotated.
        super().init_for_request()  # type: ignore[no-untyped-call]
        # Only BoundedHttpProtocol makes a DeadlineHttp: it is its HTTP_CLASS.
        cast(BoundedHttpProtocol, self.protocol).request_ready()


class BoundedHttpProtocol(HttpProtocol):
    """Closes a connection whose request is not complete within `REQUEST_TIMEOUT` of the
    moment it was ready for it, and a connection opened past the ceiling.

    Sanic's own keep-alive timeout already measures what it should: the time since the last
    answer, during which nothing is received.
    """

    # Sanic's internal hook for its HTTP/1.1 state machine; tests/test_dependency_pins.py.
    HTTP_CLASS = DeadlineHttp
    __slots__ = ("before_first_cycle", "ready_at", "timed_out")

    def __init__(self, *, opened_at: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The first request's time counts from the connection's opening (`bifrost.front`
        # hands the connection on once it has read some of it).
        self.ready_at = monotonic() if opened_at is None else opened_at
        self.before_first_cycle = True
        self.timed_out = False

    def check_timeouts(self) -> None:
        """Sanic's own timeouts (keep-alive idle, response), and the request's deadline.

        Past the deadline, a request being read is answered 408 by Sanic's error handling, as
        its own request timeout is; Sanic then reads on what is left of its body, which the
        next look cuts short, closing the connection.
        """
        # Sanic's connection task and state machine (internals, as its own check_timeouts
        # reads them; tests/test_dependency_pins.py).
        task = self._task
        http = self._http if task and self.transport else None
        if task and http is not None and self._overdue(http):
            if self.before_first_cycle:
                # Handed over at its deadline (`bifrost.front`): only a cancellation from
                # within Sanic's request cycle answers 408, so look again once it has begun.
                self._callback_check_timeouts = self.loop.call_soon(self.check_timeouts)
                return
            if not self.timed_out:
                self.timed_out = True
                metrics.http_connection_closed("request_timeout")
                http.exception = RequestTimeout("Request Timeout")
                http.keep_alive = False
            task.cancel()
        # Sanic leaves HttpProtocol's methods unannotated.
        super().check_timeouts()  # type: ignore[no-untyped-call]

    def _overdue(self, http: Http) -> bool:
        """Still waiting for the request, its head or its body, past the deadline."""
        receiving = http.stage in (Stage.IDLE, Stage.REQUEST) or bool(http.request_body)
        return receiving and monotonic() - self.ready_at > self.request_timeout

    def request_ready(self) -> None:
        """The connection waits for a request from now on (its first since its opening)."""
        if not self.before_first_cycle:
            self.ready_at = monotonic()
        self.before_first_cycle = False


def open_connections(request: Request) -> int:
    """Every open connection of the request's worker, the request's own included."""
    # Typed as any protocol; a request reaches a handler only over Sanic's HTTP/1.1 one.
    http = cast(HttpProtocol, request.transport.get_protocol())
    return count_open(http.connections, service_of(http.app).registry)


def count_open(connections: Collection[object], registry: ChannelRegistry[Any]) -> int:
    """HTTP connections not yet upgraded (Sanic's set, shared by the worker's connections)
    and websockets (`bifrost.handshake` moves a connection from the one to the other)."""
    return len(connections) + registry.connected


def close_after_answer(request: Request) -> None:
    """Close the request's connection once it is answered, instead of keeping it alive."""
    stream = request.stream
    assert isinstance(stream, Http), "served by Sanic's HTTP/1.1 protocol"
    stream.keep_alive = False
