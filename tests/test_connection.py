"""Write-side rules of `bifrost/connection.py`, driven through a transport that records."""

from __future__ import annotations

from websockets.frames import Close, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from bifrost.connection import Subscriber
from tests.raw_peer import masked_frame

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
