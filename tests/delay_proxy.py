"""A TCP proxy of the tests' own that delays what clients send: Redis in another region.

Every chunk from a client reaches the server `delay` seconds after the proxy read it, in order;
the server's answers come back at once. A command therefore takes one delay to arrive, as it
does to a managed Redis far away, while the proxy adds nothing else. It runs on its own event
loop in a thread, so that a test blocking its own loop does not slow it down, and it counts
what went through, so that a test can wait for a command to have reached the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

from tests.live import free_port

__all__ = ["DelayProxy"]

CHUNK_BYTES = 65536


class DelayProxy:
    """Listens on a free loopback port and forwards to `127.0.0.1:target_port`."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = free_port()
        self._received = b""
        self._forwarded = b""
        self._changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._serving: set[asyncio.Task[None]] = set()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> DelayProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)
        return self

    def stop(self) -> None:
        """Close the listener and every connection through it."""
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def wait_received(self, data: bytes, times: int = 1, timeout: float = 5.0) -> None:
        """Block until clients have sent `data` `times` times in all (not yet delivered)."""
        self._wait(lambda: self._received.count(data) >= times, f"{data!r} x{times} sent", timeout)

    def wait_forwarded(self, data: bytes, times: int = 1, timeout: float = 5.0) -> None:
        """Block until `data` has reached the server `times` times in all (from any client)."""
        self._wait(lambda: self._forwarded.count(data) >= times, f"{data!r} x{times}", timeout)

    def _wait(self, done: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done():
                left = deadline - time.monotonic()
                assert left > 0, f"not within {timeout} s: {what}"
                self._changed.wait(left)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._serving, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        try:
            server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_out.close()
            return
        serving = asyncio.current_task()
        assert serving is not None
        self._serving.add(serving)
        self._writers |= {client_out, server_out}
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        pipes = [
            asyncio.create_task(self._read_client(client_in, chunks)),
            asyncio.create_task(self._deliver_late(chunks, server_out)),
            asyncio.create_task(_copy(server_in, client_out)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for writer in (client_out, server_out):
                writer.close()
                self._writers.discard(writer)
            self._serving.discard(serving)

    async def _read_client(
        self, reader: asyncio.StreamReader, chunks: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        while data := await reader.read(CHUNK_BYTES):
            chunks.put_nowait((time.monotonic() + self.delay, data))
            with self._changed:
                self._received += data
                self._changed.notify_all()
        # The client's end of stream goes out late too, after everything it sent.
        chunks.put_nowait((time.monotonic() + self.delay, b""))
        await asyncio.Future()

    async def _deliver_late(
        self, chunks: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        while True:
            due, data = await chunks.get()
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if not data:
                return
            writer.write(data)
            with self._changed:
                self._forwarded += data
                self._changed.notify_all()
            await writer.drain()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK_BYTES):
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()
