"""The one background task per process that pings quiet sockets and closes dead ones."""

from __future__ import annotations

import asyncio
import logging
from time import monotonic

from bifrost.rules.liveness import SendPing, liveness_verdict
from bifrost.rules.registry import ChannelRegistry
from bifrost.rules.settings import Settings
from bifrost.subscribers import Connected

__all__ = ["reap_idle_sockets", "reaper_tick"]

SOCKETS_PER_STEP = 128

logger = logging.getLogger("bifrost.reaper")


def reaper_tick(settings: Settings) -> float:
    """How often to look: a quarter of the shortest timeout, between 0.05 s and 1 s."""
    shortest = min(settings.auth_timeout, settings.ping_interval, settings.idle_timeout)
    return min(1.0, max(0.05, shortest / 4))


async def reap_idle_sockets(
    registry: ChannelRegistry[Connected], settings: Settings, stopping: asyncio.Event
) -> None:
    """Walk every socket once a tick, applying the liveness rules, until the server stops."""
    tick = reaper_tick(settings)
    while True:
        try:
            await asyncio.wait_for(stopping.wait(), tick)
            return
        except TimeoutError:
            pass
        now = monotonic()
        for index, listener in enumerate(registry.listeners()):
            if index % SOCKETS_PER_STEP == SOCKETS_PER_STEP - 1:
                # Let broadcasts through between steps: closing a thousand sockets that
                # never authenticated, all due at once, would otherwise hold them up.
                await asyncio.sleep(0)
            if listener.closed:
                continue
            verdict = liveness_verdict(
                listener.liveness,
                now,
                auth_timeout=settings.auth_timeout,
                ping_interval=settings.ping_interval,
                idle_timeout=settings.idle_timeout,
            )
            if isinstance(verdict, SendPing):
                listener.ping(now)
            elif verdict is not None:
                logger.info("closing socket: %s", verdict.reason)
                listener.close(verdict)
