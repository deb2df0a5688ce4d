"""An event-stream client for the live tests: what `curl -N` shows, read as EventSource reads it.

httpx streams the answer; the lines are parsed by the rules of the HTML standard's event
stream (fields, a blank line dispatching the event, the last id kept from event to event), so
that a test sees what a browser's `onmessage` and `lastEventId` would.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.live import BifrostServer

__all__ = ["END", "Event", "EventStreamReader", "RawStreamPeer", "open_stream"]

RECEIVE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Event:
    """One dispatched event: its data, and the stream's last event id after it."""

    data: str
    last_id: str
    # Whether the event itself carried an `id:` field.
    has_id: bool

    def json(self) -> Any:
        return json.loads(self.data)


END = object()


@dataclass
class EventStreamReader:
    """An open stream: its answer, the events parsed from it in order, and what came besides."""

    response: httpx.Response
    client: httpx.AsyncClient
    last_id: str = ""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    _queue: asyncio.Queue[Event | object] = field(default_factory=asyncio.Queue)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        data: list[str] = []
        carried_id = False
        try:
            async for line in self.response.aiter_lines():
                if line == "":
                    if data:
                        self._queue.put_nowait(Event("\n".join(data), self.last_id, carried_id))
                    data, carried_id = [], False
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                elif name == "id":
                    self.last_id, carried_id = value, True
                elif name == "retry" and value.isdigit():
                    self.retry = int(value)
        except (httpx.TransportError, httpx.StreamError):
            pass
        finally:
            self._queue.put_nowait(END)

    async def next(self, timeout: float = RECEIVE_TIMEOUT) -> Event:
        """The next event; fails if the stream ends first or nothing comes in time."""
        item = await asyncio.wait_for(self._queue.get(), timeout)
        assert isinstance(item, Event), "the stream ended"
        return item

    async def frames(self, count: int, timeout: float = RECEIVE_TIMEOUT) -> list[Any]:
        """The JSON of the next `count` events."""
        return [(await self.next(timeout)).json() for _ in range(count)]

    async def ended(self, timeout: float = RECEIVE_TIMEOUT) -> list[Event]:
        """Wait for the stream to end; the events that came before the end."""
        events = []
        while (item := await asyncio.wait_for(self._queue.get(), timeout)) is not END:
            assert isinstance(item, Event)
            events.append(item)
        return events

    def pending(self) -> int:
        """Events parsed and not yet taken."""
        return self._queue.qsize()

    async def close(self) -> None:
        await self.response.aclose()
        await self.client.aclose()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


async def open_stream(
    server: BifrostServer,
    token: str | None = None,
    *,
    last_event_id: str | None = None,
    since: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> EventStreamReader:
    """GET /subscribe as an event stream, the token in `?token=`; answered 200 or not, the
    reader holds the answer (its events are read only for a 200 event stream)."""
    params = {name: value for name, value in (("token", token), ("since", since)) if value}
    sent = {"accept": "text/event-stream", **(headers or {})}
    if last_event_id is not None:
        sent["last-event-id"] = last_event_id
    client = httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(10, read=None))
    request = client.build_request("GET", "/subscribe", params=params, headers=sent)
    response = await client.send(request, stream=True)
    reader = EventStreamReader(response, client)
    if response.status_code == 200 and response.headers.get("content-type", "").startswith(
        "text/event-stream"
    ):
        reader.start()
    return reader


class RawStreamPeer:
    """An event-stream client over a plain blocking socket that reads only when told: the
    reader that stops reading. A small `receive_buffer` makes the kernel hold little of what it
    does not read, so that the server's own bound is what is tested."""

    def __init__(self, server: BifrostServer, token: str, *, receive_buffer: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect(("127.0.0.1", server.port))
        self.sock.sendall(
            f"GET /subscribe?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        self.received = b""

    def read_until(self, marker: bytes, timeout: float = RECEIVE_TIMEOUT) -> None:
        self.sock.settimeout(timeout)
        while marker not in self.received:
            chunk = self.sock.recv(65536)
            assert chunk, f"the stream ended before {marker!r}"
            self.received += chunk

    def drain(self, timeout: float) -> bool:
        """Read until the server ends the connection; whether it did within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()
