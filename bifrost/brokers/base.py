"""The seam between a process and its peers: how a broadcast reaches every subscriber.

The blueprints and the registry never know which broker runs. The in-process broker serves
one worker with no configuration; a broker between workers and nodes implements the same
verbs and answers the same totals.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bifrost.rules.protocol import text_frame
from bifrost.rules.registry import ChannelRegistry

__all__ = ["Broker", "BrokerUnavailable", "LocalBroker", "Totals"]


class BrokerUnavailable(Exception):
    """The broker cannot take a message now; the sender must hear that it was not delivered."""


@dataclass(frozen=True, slots=True)
class Totals:
    """Figures summed over every process the broker reaches."""

    connected: int
    deliveries: int
    channels: int
    subscriptions: int


class Broker(ABC):
    """Carries broadcasts to every process with subscribers, and counts across them."""

    # Whether the broker must hear of channels gaining their first or losing their last local
    # subscriber; when it need not, a socket subscribes without waiting on it.
    follows_channels = True

    @abstractmethod
    async def start(self) -> None:
        """Connect to whatever carries the messages."""

    @abstractmethod
    async def stop(self) -> None:
        """Let go of it on shutdown."""

    @abstractmethod
    def channels_occupied(self, channels: Sequence[str]) -> None:
        """Channels have their first local subscriber: start receiving their broadcasts.

        Called in the same step as the registry changes, never later, so that the broker
        hears of channels occupied and vacated in the order they were; `wait_subscribed`
        says when the broadcasts arrive.
        """

    @abstractmethod
    def channels_vacated(self, channels: Sequence[str]) -> None:
        """Channels' last local subscriber left: stop receiving their broadcasts."""

    @abstractmethod
    async def wait_subscribed(self, channels: Sequence[str]) -> None:
        """Return once broadcasts to every one of these occupied channels reach this process.

        Raises BrokerUnavailable when that is not confirmed in time: the socket must not be
        told it is subscribed.
        """

    @abstractmethod
    async def publish(self, channels: Sequence[str], payload: bytes) -> int:
        """Deliver a message's JSON to every subscriber of the channels; return how many got it.

        Raises BrokerUnavailable when the message cannot be carried.
        """

    @abstractmethod
    async def totals(self) -> Totals:
        """Connections, deliveries, channels and subscriptions over every process."""

    def unavailable_reason(self) -> str | None:
        """Why the broker cannot carry messages right now, or None when it can."""
        return None


class LocalBroker(Broker):
    """The broker of a single process: a broadcast goes straight to the local registry."""

    follows_channels = False

    def __init__(self, registry: ChannelRegistry[Any]) -> None:
        self._registry = registry

    async def start(self) -> None:
        """Nothing to connect to."""

    async def stop(self) -> None:
        """Nothing to let go of."""

    def channels_occupied(self, channels: Sequence[str]) -> None:
        """Every broadcast already reaches the local registry."""

    def channels_vacated(self, channels: Sequence[str]) -> None:
        """Every broadcast already reaches the local registry."""

    async def wait_subscribed(self, channels: Sequence[str]) -> None:
        """Every broadcast already reaches the local registry."""

    async def publish(self, channels: Sequence[str], payload: bytes) -> int:
        return self._registry.deliver(channels, text_frame(payload))

    async def totals(self) -> Totals:
        registry = self._registry
        return Totals(
            connected=registry.connected,
            deliveries=registry.deliveries,
            channels=registry.channel_count,
            subscriptions=registry.subscription_count,
        )
