"""A websocket client that does only what a test tells it: the peer no browser would be.

Built on the sans-I/O protocol of `websockets` over a plain blocking socket, so that nothing
in it replies to pings, reads on its own or paces its writes: the laptop that closed its lid,
the client that pipelines frames behind its handshake, the one that floods.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Sequence

from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from tests.live import BifrostServer, subscribe_token

__all__ = ["RawPeer", "authenticate_frame", "close_frame", "masked_frame"]


def masked_frame(payload: bytes, opcode: Opcode = Opcode.TEXT, *, fin: bool = True) -> bytes:
    """The bytes of one client frame, masked as a client must."""
    return Frame(opcode, payload, fin=fin).serialize(mask=True, extensions=[])


def close_frame(code: int = 1000, reason: str = "") -> bytes:
    """A client's close frame, as a peer leaving cleanly sends it."""
    return masked_frame(Close(code, reason).serialize(), Opcode.CLOSE)


def authenticate_frame(channels: Sequence[str]) -> bytes:
    message = {"event": "authenticate", "data": subscribe_token(channels)}
    return masked_frame(json.dumps(message).encode())


class RawPeer:
    """Opens a websocket; authenticates when given channels; `pipelined` frames go out in the
    same write as the handshake request, before the server has answered it. A small
    `receive_buffer` makes the kernel hold little of what the peer does not read."""

    def __init__(
        self,
        server: BifrostServer,
        channels: Sequence[str] | None = None,
        *,
        pipelined: bytes = b"",
        receive_buffer: int | None = None,
    ) -> None:
        self.protocol = ClientProtocol(parse_uri(server.ws_url))
        self.sock = socket.socket()
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect(("127.0.0.1", server.port))
        self.protocol.send_request(self.protocol.connect())
        handshake = b"".join(self.protocol.data_to_send())
        self.sock.sendall(handshake + pipelined)
        self._receive_until(lambda: self.protocol.state is State.OPEN)
        if channels is not None:
            self.send(authenticate_frame(channels))

    def send(self, data: bytes) -> None:
        self.sock.settimeout(5.0)
        self.sock.sendall(data)

    def flood(self, frame: bytes, seconds: float) -> int:
        """Write `frame` over and over for `seconds` or until the server stops reading; return
        how many bytes went out."""
        burst = frame * max(1, 65536 // len(frame))
        sent = 0
        deadline = time.monotonic() + seconds
        self.sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                sent += self.sock.send(burst)
            except TimeoutError:
                continue  # the server reads no more: its buffers are full
            except OSError:
                break  # reset: the server dropped the connection
        return sent

    def _receive_until(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        self.sock.settimeout(timeout)
        while not done():
            data = self.sock.recv(65536)
            if not data:
                self.protocol.receive_eof()
                return
            self.protocol.receive_data(data)

    def texts_received(self, count: int, timeout: float = 5.0) -> list[str]:
        """Read until `count` text frames have come (pings go unanswered); their texts."""
        texts: list[str] = []

        def enough() -> bool:
            for event in self.protocol.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    texts.append(event.data.decode())
            return len(texts) >= count

        self._receive_until(enough, timeout)
        return texts

    def close_frame_received(self, timeout: float) -> Close | None:
        """Read what the server sent (pings go unanswered) until its close frame or timeout."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            if not data:
                break
            self.protocol.receive_data(data)
            self.protocol.data_to_send()  # the pongs and close reply this peer never sends
            if self.protocol.close_rcvd is not None:
                return self.protocol.close_rcvd
        return self.protocol.close_rcvd

    def close(self) -> None:
        self.sock.close()
