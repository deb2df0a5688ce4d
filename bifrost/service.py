"""What the handlers of one worker share, created when the server starts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from sanic import Sanic

from bifrost.brokers.base import Broker
from bifrost.connection import Subscriber
from bifrost.rules.registry import ChannelRegistry
from bifrost.rules.settings import Settings
from bifrost.rules.tokens import TokenVerifier

__all__ = ["Service", "service_of"]


@dataclass(slots=True)
class Service:
    """The settings, sockets, broker and token rules of this worker."""

    settings: Settings
    registry: ChannelRegistry[Subscriber]
    broker: Broker
    verifier: TokenVerifier
    # Set when the server begins to stop: new broadcasts are refused, the reaper ends.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


def service_of(app: Sanic[Any, Any]) -> Service:
    """The worker's service, typed."""
    service: Service = app.ctx.service
    return service
