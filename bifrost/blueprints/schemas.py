"""The shapes of the HTTP bodies, for the published OpenAPI description."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BroadcastAnswer", "BroadcastRequest", "ErrorAnswer", "Stats", "StatsAnswer"]


@dataclass
class BroadcastRequest:
    """A broadcast: a JWT naming `channel` or `channels`, a `message` and an `exp`."""

    token: str


@dataclass
class BroadcastAnswer:
    """The message was handed to `deliveries` sockets."""

    message: str
    deliveries: int


@dataclass
class ErrorAnswer:
    """Why a request was refused."""

    error: str


@dataclass
class Stats:
    """Totals since start over every process."""

    deliveries: int
    connected: int
    channels: int
    subscriptions: int


@dataclass
class StatsAnswer:
    """The body of `/info.json`."""

    stats: Stats
