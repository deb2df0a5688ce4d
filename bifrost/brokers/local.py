"""The broker of a single process: a broadcast goes straight to the local fan-out, and history
is kept in this process's memory (`bifrost.rules.streams`), lost with it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from time import monotonic

from bifrost.brokers.base import Broker, Deliver, Figures, HistoryLimits, Published, Totals
from bifrost.rules.history import ChannelSnapshot
from bifrost.rules.positions import Position
from bifrost.rules.streams import Streams

__all__ = ["LocalBroker"]


class LocalBroker(Broker):
    """Every broadcast already reaches the one process there is: nothing to connect or follow."""

    follows_channels = False

    def __init__(
        self, deliver: Deliver, figures: Figures, history: HistoryLimits | None = None
    ) -> None:
        self._deliver = deliver
        self._figures = figures
        self._streams = Streams(history.size, history.ttl) if history else None

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

    async def publish(self, channels: Sequence[str], payload: bytes) -> Published:
        if self._streams is None:
            return Published(self._deliver(channels, payload, None))
        positions = self._streams.append(channels, payload, monotonic())
        return Published(self._deliver(channels, payload, positions), positions)

    async def snapshot(
        self, channels: Sequence[str], since: Mapping[str, Position]
    ) -> dict[str, ChannelSnapshot]:
        """Read in the same step as the fan-out runs: no live message can fall between."""
        if self._streams is None:
            raise RuntimeError("history is off: there are no streams to read")
        now = monotonic()
        return {c: self._streams.snapshot(c, since.get(c), now) for c in channels}

    async def totals(self) -> Totals:
        return self._figures()
