"""What one process keeps on `app.ctx`, typed: the settings, and what the handlers of a worker
share once its server has started."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sanic import Sanic

from bifrost.brokers.base import Broker
from bifrost.metrics import MadeFolder
from bifrost.rules.registry import ChannelRegistry
from bifrost.rules.settings import Settings
from bifrost.rules.tokens import TokenVerifier
from bifrost.subscribers import Connected

if TYPE_CHECKING:
    from bifrost.blueprints.subscribe import Subscriptions

__all__ = ["BifrostContext", "Service", "context_of", "service_of"]


@dataclass(slots=True)
class Service:
    """The settings, sockets, broker and token rules of this worker."""

    settings: Settings
    registry: ChannelRegistry[Connected]
    broker: Broker
    verifier: TokenVerifier
    # Set when the server begins to stop: new broadcasts are refused, the reaper ends.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class BifrostContext:
    """`app.ctx`: each field set by the listener that made what it holds, None until then.

    Not slotted: Sanic's extensions keep attributes of their own here (sanic-ext its `cors`).
    """

    settings: Settings
    # Whether this process has checked the secret for its run mode and logged the settings.
    settings_checked: bool = False
    # The app's, made when a worker's server starts, and its reaper.
    service: Service | None = None
    reaper: asyncio.Task[None] | None = None
    # The subscribe blueprint's: what the frames of `/subscribe` mean.
    subscriptions: Subscriptions | None = None
    # The metrics blueprint's: the main process's folder, and a worker's sampling task.
    metrics_dir: MadeFolder | None = None
    metrics_sampler: asyncio.Task[None] | None = None


def context_of(app: Sanic[Any, Any]) -> BifrostContext:
    """The app's context, typed: every Bifröst app is made with one (`bifrost.app.create_app`)."""
    context = app.ctx
    if not isinstance(context, BifrostContext):
        raise TypeError(f"{app.name} was not made by bifrost.app.create_app")
    return context


def service_of(app: Sanic[Any, Any]) -> Service:
    """The worker's service, which exists from its server's start."""
    service = context_of(app).service
    if service is None:
        raise RuntimeError("the service exists once the server has started")
    return service
