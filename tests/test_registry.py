"""Bookkeeping of `bifrost/registry.py`, with plain listeners instead of sockets."""

from __future__ import annotations

from dataclasses import dataclass, field

from bifrost.registry import ChannelRegistry


@dataclass(eq=False)
class FakeSocket:
    """A listener that records the frames handed to it."""

    accepts: bool = True
    channels: set[str] = field(default_factory=set)
    received: list[bytes] = field(default_factory=list)

    def send(self, frame: bytes) -> bool:
        if self.accepts:
            self.received.append(frame)
        return self.accepts


def test_first_subscriber_occupies_and_last_vacates():
    """A channel is reported occupied on its first socket and vacated after its last."""
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry()
    a, b = FakeSocket(), FakeSocket()
    registry.connect(a)
    registry.connect(b)
    assert registry.subscribe(a, ["x", "y"]) == ["x", "y"]
    assert registry.subscribe(b, ["y", "z"]) == ["z"]
    assert registry.subscribe(a, ["x"]) == []
    assert registry.disconnect(a) == ["x"]
    assert sorted(registry.disconnect(b)) == ["y", "z"]
    assert (registry.connected, registry.channel_count) == (0, 0)


def test_deliver_once_per_socket_and_count():
    """A frame for several channels reaches each socket once; only accepted frames count."""
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry()
    both, only_y, refusing = FakeSocket(), FakeSocket(), FakeSocket(accepts=False)
    for sock, channels in ((both, ["x", "y"]), (only_y, ["y"]), (refusing, ["x"])):
        registry.connect(sock)
        registry.subscribe(sock, channels)
    assert registry.deliver(["x", "y"], b"f") == 2
    assert both.received == [b"f"] and only_y.received == [b"f"]
    assert registry.deliver(["y"], b"g") == 2
    assert registry.deliveries == 4
    assert registry.subscription_count == 4
