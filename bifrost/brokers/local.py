"""The broker of a single process: a broadcast goes straight to the local fan-out."""

from __future__ import annotations

from collections.abc import Sequence

from bifrost.brokers.base import Broker, Deliver, Figures, Totals

__all__ = ["LocalBroker"]


class LocalBroker(Broker):
    """Every broadcast already reaches the one process there is: nothing to connect or follow."""

    follows_channels = False

    def __init__(self, deliver: Deliver, figures: Figures) -> None:
        self._deliver = deliver
        self._figures = figures

    async def start(self) -> None:
        """Nothing to connect to."""

    async def stop(self) -> None:
        """Nothing to let go of."""

    def channels_occupied(self, channels: Sequence[str]) -> None:
        """Every broadcast already reaches the local fan-out."""

    def channels_vacated(self, channels: Sequence[str]) -> None:
        """Every broadcast already reaches the local fan-out."""

    async def wait_subscribed(self, channels: Sequence[str]) -> None:
        """Every broadcast already reaches the local fan-out."""

    async def publish(self, channels: Sequence[str], payload: bytes) -> int:
        return self._deliver(channels, payload)

    async def totals(self) -> Totals:
        return self._figures()
