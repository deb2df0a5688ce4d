"""Write-side rules of `bifrost/connection.py`, driven through a transport that records."""

from __future__ import annotations

from websockets.frames import Close, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from bifrost.connection import Subscriber
from bifrost.rules.protocol import SERVICE_RESTART, text_frame
from bifrost.rules.registry import ChannelRegistry
from tests.raw_peer import masked_frame
from tests.test_registry import Turns

BOUND = 1000


class RecordingTransport:
    """Keeps every write unsent, and calls `pause_writing` when they pass the high-water mark,
    from inside `write`, as uvloop does."""

    def __init__(self) -> None:
        self.protocol: Subscriber | None = None
        self.written: list[bytes] = []
        self.high = 64 * 1024
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written.append(data)
        if not self.paused and self.get_write_buffer_size() > self.high:
            self.paused = True
            assert self.protocol is not None
            self.protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.written))

    def set_write_buffer_limits(self, high: int) -> None:
        self.high = high

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 1) if name == "peername" else None

    def abort(self) -> None:
        pass


class Events:
    def message_received(self, subscriber: Subscriber, message: str) -> None:
        pass

    def closing(self, subscriber: Subscriber) -> None:
        pass

    def disconnected(self, subscriber: Subscriber) -> None:
        pass


async def test_nothing_follows_the_close_frame_of_a_slow_consumer():
    """Pongs queued before the write that went over the bound are not sent after the close."""
    transport = RecordingTransport()
    subscriber = Subscriber(
        transport,  # type: ignore[arg-type]
        ServerProtocol(max_size=65536, state=State.OPEN),
        Events(),
        max_pending_bytes=BOUND,
        max_frames_per_second=100.0,
        now=0.0,
    )
    transport.protocol = subscriber
    subscriber.connection_made(transport)  # type: ignore[arg-type]
    ping = masked_frame(b"p" * 120, Opcode.PING)
    subscriber.data_received(ping * 12)  # twelve pongs of 122 bytes: the ninth passes 1,000
    opcodes = [data[0] & 0x0F for data in transport.written]
    assert subscriber.closed
    assert opcodes[-1] == Opcode.CLOSE.value, "the close frame is the last thing written"
    assert opcodes.count(Opcode.PONG.value) == 9
    close = Close.parse(transport.written[-1][2:])
    assert (close.code, close.reason) == (1008, "Slow consumer")


def subscribed_socket(
    registry: ChannelRegistry[Subscriber],
) -> tuple[Subscriber, RecordingTransport]:
    transport = RecordingTransport()
    subscriber = Subscriber(
        transport,  # type: ignore[arg-type]
        ServerProtocol(max_size=65536, state=State.OPEN),
        Withdrawing(registry),
        max_pending_bytes=BOUND,
        max_frames_per_second=100.0,
        now=0.0,
    )
    transport.protocol = subscriber
    subscriber.connection_made(transport)  # type: ignore[arg-type]
    registry.subscribe(subscriber, ["c"])
    return subscriber, transport


class Withdrawing(Events):
    """Takes a closing socket out of its channels, as the subscribe blueprint does."""

    def __init__(self, registry: ChannelRegistry[Subscriber]) -> None:
        self.registry = registry

    def closing(self, subscriber: Subscriber) -> None:
        self.registry.withdraw(subscriber)


async def test_a_close_after_a_burst_follows_the_burst_frames():
    """A socket closed in the turn of a burst writes the burst's gathered frames, then its close."""
    turns = Turns()
    registry: ChannelRegistry[Subscriber] = ChannelRegistry(turns)
    subscriber, transport = subscribed_socket(registry)
    for n in range(4):
        registry.deliver(["c"], b'{"n":%d}' % n)
    subscriber.close(SERVICE_RESTART)
    turns.end()
    assert transport.written[0] == text_frame(b'{"n":0}')
    assert transport.written[1] == b"".join(text_frame(b'{"n":%d}' % n) for n in (1, 2, 3))
    assert len(transport.written) == 3, "nothing follows the close frame"
    close = Close.parse(transport.written[2][2:])
    assert (close.code, close.reason) == (1012, "Service restart")


async def test_a_pong_in_the_turn_of_a_burst_follows_its_frames():
    """A pong the socket writes while frames are gathered for it comes after them."""
    turns = Turns()
    registry: ChannelRegistry[Subscriber] = ChannelRegistry(turns)
    subscriber, transport = subscribed_socket(registry)
    registry.deliver(["c"], b"0")
    registry.deliver(["c"], b"1")
    subscriber.data_received(masked_frame(b"p", Opcode.PING))
    turns.end()
    assert transport.written[:2] == [text_frame(b"0"), text_frame(b"1")]
    assert [data[0] & 0x0F for data in transport.written] == [1, 1, Opcode.PONG.value]


async def test_a_burst_over_the_bound_closes_the_socket_after_its_frames():
    """The write of a turn's gathered frames that passes the bound closes the socket with
    `Slow consumer`, its close frame last, and it is sent nothing more."""
    turns = Turns()
    registry: ChannelRegistry[Subscriber] = ChannelRegistry(turns)
    subscriber, transport = subscribed_socket(registry)
    for _ in range(5):
        registry.deliver(["c"], b"x" * 300)
    assert not subscriber.closed
    turns.end()
    assert subscriber.closed and not subscriber.channels
    close = Close.parse(transport.written[-1][2:])
    assert (close.code, close.reason) == (1008, "Slow consumer")
    assert len(transport.written) == 3
    assert registry.deliver(["c"], b"after") == 0
    turns.end()
    assert len(transport.written) == 3


async def test_replies_and_recovered_frames_follow_the_burst_in_one_write():
    """A recovery's replies and missed messages, sent in the turn of a burst, go out after the
    burst's gathered frames, together in one write and in their order."""
    turns = Turns()
    registry: ChannelRegistry[Subscriber] = ChannelRegistry(turns)
    subscriber, transport = subscribed_socket(registry)
    registry.deliver(["c"], b"0")
    registry.deliver(["c"], b"1")
    subscriber.send_json([(b'{"event":"subscribed"}', ()), (b'{"n":"missed"}', ())])
    turns.end()
    assert transport.written == [
        text_frame(b"0"),
        text_frame(b"1"),
        text_frame(b'{"event":"subscribed"}') + text_frame(b'{"n":"missed"}'),
    ]
