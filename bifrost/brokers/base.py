"""The seam between a process and its peers: what a broker is asked, and what it answers.

A broker carries a message's JSON to every process with subscribers of its channels and
reports how many sockets it reached; it holds no socket and builds no frame. It is handed, when
it is made, the two things of its own process it needs: `deliver`, the local fan-out
(`ChannelRegistry.deliver`, which frames the message once and writes it to each socket), and
`figures`, this process's own counts. Unlike encode/broadcaster's backends, whose subscribers
pull the next message, the broker pushes each message into `deliver` as it arrives: the count
it returns is what a node answers the publisher with, so that `deliveries` is exact.

With history on (`BIFROST_HISTORY_SIZE`), the broker also keeps each channel's stream: a
broadcast is given its positions in the same step that carries it, and `snapshot` reads the
streams back for a socket that recovers (`bifrost.rules.history` decides what it is told).

The blueprints never know which broker runs: the in-process one (`bifrost.brokers.local`)
serves one worker with no configuration; the Redis one (`bifrost.brokers.redis`) implements
the same verbs between workers and nodes and answers the same totals.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bifrost.rules.history import ChannelSnapshot
from bifrost.rules.positions import MessagePositions, Position
from bifrost.rules.registry import Totals

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "Deliver",
    "Figures",
    "HistoryLimits",
    "Published",
    "Totals",
]

# The local fan-out: a message's JSON, and its positions when history is on, to the sockets of
# these channels; how many took it.
Deliver = Callable[[Sequence[str], bytes, MessagePositions | None], int]
# This process's own connections, deliveries, channels and subscriptions.
Figures = Callable[[], Totals]


@dataclass(frozen=True, slots=True)
class HistoryLimits:
    """How many messages each channel keeps, and for how many seconds after its last one."""

    size: int
    ttl: float


@dataclass(frozen=True, slots=True)
class Published:
    """What a broadcast came to: the sockets it reached, and its positions when history is on."""

    deliveries: int
    positions: MessagePositions | None = None


class BrokerUnavailable(Exception):
    """The broker cannot take a message now; the sender must hear that it was not delivered."""


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
    async def publish(self, channels: Sequence[str], payload: bytes) -> Published:
        """Carry a message's JSON to every process's `deliver`, keeping it in the channels'
        streams when history is on; say how many sockets got it.

        Raises BrokerUnavailable when the message cannot be carried.
        """

    @abstractmethod
    async def snapshot(
        self, channels: Sequence[str], since: Mapping[str, Position]
    ) -> dict[str, ChannelSnapshot]:
        """Each channel's stream at one instant, with the messages kept after its `since`
        position, read after every live message published before that instant has reached
        this process's `deliver`; history must be on.

        Raises BrokerUnavailable when the streams cannot be read.
        """

    @abstractmethod
    async def totals(self) -> Totals:
        """Connections, deliveries, channels and subscriptions over every process."""

    def unavailable_reason(self) -> str | None:
        """Why the broker cannot carry messages right now, or None when it can."""
        return None
