"""A minimal HTTP/1.1 client on one keep-alive connection, for POST /broadcast and /info.json.

Why not httpx or aiohttp: the broadcaster shares the machine with the server it measures, and a
general client spends far more CPU per request than the few lines the bench needs. This one
speaks only what both servers answer: a status line, headers, and a Content-Length body.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

import orjson

__all__ = ["HttpError", "KeepAliveClient"]

MAX_HEADER_BYTES = 64 * 1024


class HttpError(RuntimeError):
    """A response the bench cannot use: malformed, or without Content-Length."""


class KeepAliveClient:
    """One persistent connection; requests on it are sequential, as HTTP/1.1 requires."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @classmethod
    def for_url(cls, url: str) -> KeepAliveClient:
        """A client of the server at `url` (`http://host:port`)."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80)

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._reader.at_eof():
            # The server closed it while it was idle (its keep-alive timeout): take a new one
            # rather than write a request it will never read.
            await self.close()
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(
                self._host, self._port, limit=MAX_HEADER_BYTES
            )
        return self._reader, self._writer

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
        """Send one request and return (status, decoded JSON body or None)."""
        reader, writer = await self._connection()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
        if body or method != "GET":
            # A GET announcing a body, even an empty one, makes Sanic log "body not consumed".
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        head += "\r\n"
        writer.write(head.encode("ascii") + body)
        status_line, _, header_block = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError(f"bad status line {status_line!r}")
        length: int | None = None
        close = False
        for line in header_block.split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length is None:
            raise HttpError(f"{method} {path}: response without Content-Length")
        payload = await reader.readexactly(length)
        if close:
            await self.close()
        return int(parts[1]), orjson.loads(payload) if payload else None

    async def post_json(self, path: str, document: Any) -> tuple[int, Any]:
        return await self.request("POST", path, orjson.dumps(document))

    async def get_json(self, path: str) -> tuple[int, Any]:
        return await self.request("GET", path)

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
