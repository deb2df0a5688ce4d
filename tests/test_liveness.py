"""The timing rules of liveness and of the frame budget, checked without a server."""

from __future__ import annotations

from bifrost.rules.liveness import SEND_PING, Liveness, liveness_verdict
from bifrost.rules.protocol import AUTHENTICATION_TIMEOUT, IDLE_TIMEOUT
from bifrost.rules.ratelimit import FrameBudget

TIMEOUTS = {"auth_timeout": 10.0, "ping_interval": 30.0, "idle_timeout": 60.0}


def verdict(state: Liveness, now: float):
    return liveness_verdict(state, now, **TIMEOUTS)


def test_unauthenticated_socket_times_out():
    """A socket not authenticated within the auth timeout is closed, however chatty."""
    state = Liveness(connected_at=0, last_heard=0)
    assert verdict(state, 9.9) is None
    state.heard(9.9)
    assert verdict(state, 10.0) == AUTHENTICATION_TIMEOUT


def test_quiet_socket_is_pinged_once_per_interval():
    """A socket silent for the ping interval is pinged, then not again until another interval."""
    state = Liveness(connected_at=0, last_heard=0, authenticated=True)
    assert verdict(state, 29.9) is None
    assert verdict(state, 30.0) == SEND_PING
    state.last_pinged = 30.0
    assert verdict(state, 45.0) is None
    assert verdict(state, 60.0) == IDLE_TIMEOUT


def test_pong_keeps_socket_alive():
    """Hearing from the peer, a pong included, restarts the silence."""
    state = Liveness(connected_at=0, last_heard=0, authenticated=True, last_pinged=30.0)
    state.heard(31.0)
    assert verdict(state, 60.0) is None
    assert verdict(state, 61.0) == SEND_PING


def test_a_client_that_never_speaks_gets_a_ping_every_interval_and_is_never_idle():
    """An event stream's client says nothing after its request: it is pinged (a comment line)
    every ping interval from its start, and never closed for silence or authentication."""
    state = Liveness(connected_at=0, last_heard=0, authenticated=True, speaks=False)
    assert verdict(state, 29.9) is None
    assert verdict(state, 30.0) == SEND_PING
    state.last_pinged = 30.0
    assert verdict(state, 59.9) is None
    assert verdict(state, 3600.0) == SEND_PING


def test_frame_budget_allows_rate_and_refills():
    """A bucket allows `rate` frames at once, then refills at `rate` per second."""
    budget = FrameBudget(5, now=0.0)
    assert all(budget.spend(0.0) for _ in range(5))
    assert not budget.spend(0.0)
    assert budget.spend(0.2)
    assert not budget.spend(0.2)


def test_frame_budget_below_one_per_second_still_allows_one():
    """A rate below one frame a second still lets a frame through now and then."""
    budget = FrameBudget(0.5, now=0.0)
    assert budget.spend(0.0)
    assert not budget.spend(1.0)
    assert budget.spend(2.0)
