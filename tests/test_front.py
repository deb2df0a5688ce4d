"""A connection's first request head, read by `bifrost.front` on a live server: a websocket
upgrade is served at once, however it arrives, and everything else as Sanic serves it."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from tests.live import BifrostServer
from tests.raw_peer import authenticate_frame

TIMEOUT = 5.0


@pytest.fixture
def live(start_server) -> BifrostServer:
    return start_server(name="front")


@pytest.fixture
def connection(live: BifrostServer) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=TIMEOUT)
    yield sock
    sock.close()


def upgrade_request(
    live: BifrostServer, *extra_headers: tuple[str, str]
) -> tuple[ClientProtocol, bytes]:
    """A client's websocket handshake request, with `extra_headers` added to its head."""
    client = ClientProtocol(parse_uri(live.ws_url))
    request = client.connect()
    for name, value in extra_headers:
        request.headers[name] = value
    client.send_request(request)
    return client, b"".join(client.data_to_send())


class Reader:
    """What the server sends a client protocol on `sock`: its answer, then its text frames."""

    def __init__(self, sock: socket.socket, client: ClientProtocol) -> None:
        self.sock, self.client = sock, client
        self.events: list[object] = []

    def _more(self) -> None:
        data = self.sock.recv(65536)
        assert data, f"connection closed after {self.events}"
        self.client.receive_data(data)
        self.events += self.client.events_received()

    def answer(self) -> Response:
        while not any(isinstance(event, Response) for event in self.events):
            self._more()
        return next(event for event in self.events if isinstance(event, Response))

    def texts(self, count: int) -> list[dict[str, object]]:
        """The first `count` text frames, as JSON."""
        while len(frames := self._texts()) < count:
            self._more()
        return frames[:count]

    def _texts(self) -> list[dict[str, object]]:
        return [
            json.loads(event.data)
            for event in self.events
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT
        ]


@pytest.mark.parametrize("chunk", [1, 7, 10_000], ids=["byte-by-byte", "7-bytes", "whole"])
def test_upgrade_in_any_pieces_with_a_frame_behind_it_subscribes(live, connection, chunk):
    """The head and an authenticate frame right behind it, written in pieces of `chunk` bytes:
    the socket answers 101 and then `subscribed`, as for a head sent alone."""
    client, head = upgrade_request(live)
    sent = head + authenticate_frame(["pieces"])
    for start in range(0, len(sent), chunk):
        connection.sendall(sent[start : start + chunk])
    reader = Reader(connection, client)
    assert reader.answer().status_code == 101
    assert reader.texts(1) == [{"event": "subscribed", "data": '{"channel":"pieces"}'}]


def test_upgrade_after_an_http_answer_on_the_same_connection_subscribes(live, connection):
    """A kept-alive connection that asked something else first still becomes a websocket."""
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answered = b""
    while b"\r\n\r\n" not in answered:
        answered += connection.recv(65536)
    assert answered.startswith(b"HTTP/1.1 200")
    client, head = upgrade_request(live)
    connection.sendall(head + authenticate_frame(["second"]))
    reader = Reader(connection, client)
    assert reader.answer().status_code == 101
    assert reader.texts(1)[0]["event"] == "subscribed"


def test_the_101_is_the_same_whichever_protocol_answers_it(live):
    """A head with a byte beyond ASCII (a UTF-8 cookie) is left to Sanic's protocol: its 101
    carries the same headers as the one answered at once."""
    answers = []
    for extra in [(), (("Cookie", "name=café"),)]:
        with socket.create_connection(("127.0.0.1", live.port), timeout=TIMEOUT) as sock:
            client, head = upgrade_request(live, *extra)
            sock.sendall(head.replace("café".encode("latin-1"), "café".encode()))
            answer = Reader(sock, client).answer()
            answers.append((answer.status_code, sorted(k for k in answer.headers if k != "Date")))
    assert answers[0] == answers[1]
    assert answers[0][0] == 101


@pytest.mark.parametrize(
    ("origins", "status"),
    [(("https://evil.example", "https://app.example"), 403), (("https://app.example",) * 2, 400)],
    ids=["foreign-first", "allowed-twice"],
)
def test_an_origin_named_twice_is_judged_by_its_first(start_server, origins, status):
    """Whichever protocol reads the head, the first `Origin` is the one the origin check
    judges (403), and the library refuses a handshake naming its origin twice (400)."""
    live = start_server({"BIFROST_ALLOWED_ORIGINS": "https://app.example"}, name="front-origin")
    _, head = upgrade_request(live)
    doubled = b"".join(f"Origin: {origin}\r\n".encode() for origin in origins)
    with socket.create_connection(("127.0.0.1", live.port), timeout=TIMEOUT) as sock:
        sock.sendall(head[:-2] + doubled + b"\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())


def test_an_upgrade_head_past_sanics_header_limit_is_refused_413(live, connection):
    """However the head is read, one longer than the header limit gets Sanic's 413."""
    _, head = upgrade_request(live, ("X-Padding", "a" * 20_000))
    connection.sendall(head)
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += connection.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 ")
