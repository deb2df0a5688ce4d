"""The shapes of the HTTP bodies, for the published OpenAPI description."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BroadcastAnswer", "BroadcastRequest", "ErrorAnswer", "Position", "Stats", "StatsAnswer"]


@dataclass
class BroadcastRequest:
    """A broadcast: a JWT naming `channel` or `channels`, a `message` and an `exp`."""

    token: str


@dataclass
class Position:
    """Where a message stands in one channel's stream."""

    epoch: str
    offset: int


@dataclass
class BroadcastAnswer:
    """The message was handed to `deliveries` sockets; with history on, `positions` is its
    position in each channel it named."""

    message: str
    deliveries: int
    positions: dict[str, Position] | None = None


@dataclass
class ErrorAnswer:
    """Why a request was refused."""

    error: str


@dataclass
class Stats:
    """Totals since start over every process; `connected` is `websockets` plus
    `event_streams`."""

    deliveries: int
    connected: int
    channels: int
    subscriptions: int
    websockets: int
    event_streams: int


@dataclass
class StatsAnswer:
    """The body of `/info.json`."""

    stats: Stats
