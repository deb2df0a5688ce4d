"""When a socket must be pinged or closed: the timing rules of the reaper, with no I/O.

A browser tab that vanished without a close frame holds memory and inflates the stats until
somebody notices it is gone. One reaper per process walks every socket with these rules
instead of one timer task per socket, which would cost a task's memory for each connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from bifrost.rules.protocol import AUTHENTICATION_TIMEOUT, IDLE_TIMEOUT, Close

__all__ = ["SEND_PING", "Liveness", "SendPing", "liveness_verdict"]


@dataclass(slots=True)
class Liveness:
    """What the reaper needs to know of one socket."""

    connected_at: float
    last_heard: float
    last_pinged: float | None = None
    authenticated: bool = False
    # False for an event stream, whose client never says anything after its request.
    speaks: bool = True

    def heard(self, now: float) -> None:
        """Any frame from the client, or a pong to our ping, proves the peer is there."""
        self.last_heard = now


@dataclass(frozen=True, slots=True)
class SendPing:
    """Ask a silent client to prove it is still there."""


SEND_PING = SendPing()


def liveness_verdict(
    state: Liveness,
    now: float,
    *,
    auth_timeout: float,
    ping_interval: float,
    idle_timeout: float,
) -> Close | SendPing | None:
    """Close a socket that never authenticated or went silent; ping one that is getting quiet.

    A client that never speaks (an event stream's) cannot be silent: it gets a ping (a comment
    line) every `ping_interval` and is never cut for idleness; a peer that is gone shows as a
    failing write instead.
    """
    if not state.speaks:
        last = state.connected_at if state.last_pinged is None else state.last_pinged
        return SEND_PING if now - last >= ping_interval else None
    if not state.authenticated and now - state.connected_at >= auth_timeout:
        return AUTHENTICATION_TIMEOUT
    silent_for = now - state.last_heard
    if silent_for >= idle_timeout:
        return IDLE_TIMEOUT
    if silent_for < ping_interval:
        return None
    if state.last_pinged is None or now - state.last_pinged >= ping_interval:
        return SEND_PING
    return None
