"""Clients that misbehave, each in a process of its own so its CPU is not the measurer's.

- `flood`: opens a socket, authenticates, then writes masked ping frames as fast as the
  kernel takes them; when the server closes it (rate limit), it opens the next one, until
  its time is up.
- `idle`: opens N sockets that complete the websocket handshake and never authenticate,
  holds them, and reports how and when the server closed them.
- `churn`: a bounded population of sockets that connect, authenticate, stay a random short
  while and then vanish without a close frame (TCP reset), over and over.
- `hold`: N connections that never become websockets, each held as long as the server keeps
  it and reopened when cut: `silent` ones send nothing, `slowloris` ones send a request line
  and then one header line every few seconds, never the blank line that ends the request.

Raw sockets and hand-made frames, not a websocket library: a real attacker does not wait for
a library's flow control, and the point is to push the server, not the client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import multiprocessing
import os
import random
import socket
import struct
import time
from multiprocessing.connection import Connection
from typing import Any

import orjson
import uvloop

from bench.generator import raise_open_file_limit
from bench.plan import channel_name
from bench.tokens import subscribe_token

__all__ = [
    "HOLD_KINDS",
    "Child",
    "client_frame",
    "handshake",
    "run_churn",
    "run_flood",
    "run_hold",
    "run_idle",
]

HANDSHAKE_TIMEOUT_S = 10.0
FLOOD_CHUNK_FRAMES = 512


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked, final client frame (RFC 6455 5.2)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


async def handshake(
    host: str, port: int, path: str = "/subscribe"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a TCP connection and upgrade it; raise unless the server answers 101."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port), HANDSHAKE_TIMEOUT_S
    )
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANDSHAKE_TIMEOUT_S)
    if not head.startswith(b"HTTP/1.1 101"):
        writer.close()
        raise ConnectionError(f"handshake refused: {head.splitlines()[0]!r}")
    return reader, writer


def _server_close_code(data: bytes) -> int | None:
    """The close code of the first server close frame in `data` (server frames are unmasked)."""
    index = 0
    while index + 2 <= len(data):
        opcode, length = data[index] & 0x0F, data[index + 1] & 0x7F
        index += 2
        if length == 126:
            length = int.from_bytes(data[index : index + 2], "big")
            index += 2
        elif length == 127:
            length = int.from_bytes(data[index : index + 8], "big")
            index += 8
        if opcode == 0x8:
            return int.from_bytes(data[index : index + 2], "big") if length >= 2 else 1005
        index += length
    return None


# -- flood ------------------------------------------------------------------------------------


async def _read_into(reader: asyncio.StreamReader, sink: bytearray) -> None:
    """Read until the server closes, keeping what it sent."""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while chunk := await reader.read(65536):
            sink.extend(chunk)


async def _flood(host: str, port: int, secret: str, seconds: float) -> dict[str, Any]:
    token = subscribe_token(secret, ["bench:flood"], "flooder")
    auth = client_frame(orjson.dumps({"event": "authenticate", "data": token}))
    chunk = b"".join(client_frame(b'{"event":"ping"}') for _ in range(FLOOD_CHUNK_FRAMES))
    deadline = time.monotonic() + seconds
    sockets = frames = refused = 0
    codes: dict[str, int] = {}
    while time.monotonic() < deadline:
        try:
            reader, writer = await handshake(host, port)
        except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            refused += 1
            await asyncio.sleep(0.05)
            continue
        sockets += 1
        writer.write(auth)
        received = bytearray()

        reading = asyncio.create_task(_read_into(reader, received))
        try:
            while time.monotonic() < deadline and not reading.done():
                writer.write(chunk)
                frames += FLOOD_CHUNK_FRAMES
                await writer.drain()
        except OSError:
            pass
        code = _server_close_code(bytes(received))
        codes[str(code)] = codes.get(str(code), 0) + 1
        writer.transport.abort()
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
    return {"sockets": sockets, "frames_written": frames, "close_codes": codes, "refused": refused}


def run_flood(conn: Connection, host: str, port: int, secret: str, seconds: float) -> None:
    """Process entry point: flood for `seconds`, then send the tally."""
    conn.send(uvloop.run(_flood(host, port, secret, seconds)))


# -- sockets that never authenticate ----------------------------------------------------------


async def _idle(host: str, port: int, count: int, hold_s: float) -> dict[str, Any]:
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failures = 0
    semaphore = asyncio.Semaphore(32)

    async def open_one() -> None:
        nonlocal failures
        async with semaphore:
            try:
                opened.append(await handshake(host, port))
            except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
                failures += 1

    started = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(count)))
    open_s = time.monotonic() - started
    codes: dict[str, int] = {}
    closed_at: list[float] = []

    async def watch(reader: asyncio.StreamReader) -> None:
        data = bytearray()
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(4096):
                data.extend(chunk)
                if _server_close_code(bytes(data)) is not None:
                    break
        closed_at.append(time.monotonic() - started)
        code = _server_close_code(bytes(data))
        codes[str(code)] = codes.get(str(code), 0) + 1

    watchers = [asyncio.create_task(watch(r)) for r, _ in opened]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*watchers), max(0.0, hold_s - open_s))
    for task in watchers:
        task.cancel()
    for _, writer in opened:
        writer.transport.abort()
    return {
        "opened": len(opened),
        "failed": failures,
        "open_s": open_s,
        "closed_by_server": len(closed_at),
        "close_codes": codes,
        "last_closed_s": max(closed_at, default=0.0),
    }


def run_idle(conn: Connection, host: str, port: int, count: int, hold_s: float) -> None:
    """Process entry point: open `count` unauthenticated sockets, hold them up to `hold_s`."""
    raise_open_file_limit()
    conn.send(uvloop.run(_idle(host, port, count, hold_s)))


# -- churn ------------------------------------------------------------------------------------


async def _churn(
    host: str,
    port: int,
    secret: str,
    seconds: float,
    population: int,
    channels: int,
    max_stay_s: float,
) -> dict[str, Any]:
    rng = random.Random(os.getpid())
    deadline = time.monotonic() + seconds
    tally = {"connected": 0, "subscribed": 0, "failed": 0, "reset": 0, "closed_by_server": 0}

    async def one_life(index: int) -> None:
        names = [channel_name(rng.randrange(channels)) for _ in range(rng.randint(1, 3))]
        token = subscribe_token(secret, names, f"churn-{index}")
        try:
            reader, writer = await handshake(host, port)
        except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            tally["failed"] += 1
            return
        tally["connected"] += 1
        writer.write(client_frame(orjson.dumps({"event": "authenticate", "data": token})))
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
            # Wait for the first `subscribed`, then keep reading (broadcasts) until it leaves.
            await asyncio.wait_for(reader.readuntil(b"subscribed"), HANDSHAKE_TIMEOUT_S)
            tally["subscribed"] += 1
            stay = rng.uniform(0, max_stay_s)
            end = time.monotonic() + stay
            while (left := end - time.monotonic()) > 0:
                data = await asyncio.wait_for(reader.read(65536), left)
                if not data:
                    tally["closed_by_server"] += 1
                    break
        # Leave abruptly: no close frame, and a reset instead of a FIN (SO_LINGER 0).
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        tally["reset"] += 1

    async def lane(lane_index: int) -> None:
        life = 0
        while time.monotonic() < deadline:
            await one_life(lane_index * 1_000_000 + life)
            life += 1

    await asyncio.gather(*(lane(i) for i in range(population)))
    return tally


def run_churn(
    conn: Connection,
    host: str,
    port: int,
    secret: str,
    seconds: float,
    population: int,
    channels: int,
    max_stay_s: float,
) -> None:
    """Process entry point: churn for `seconds` with `population` sockets at any time."""
    raise_open_file_limit()
    conn.send(uvloop.run(_churn(host, port, secret, seconds, population, channels, max_stay_s)))


# -- connections that never become websockets -------------------------------------------------

HOLD_KINDS = ("silent", "slowloris")
HOLD_CONNECT_TIMEOUT_S = 5.0
HOLD_RECONNECT_PAUSE_S = 1.0
"""A cut lane waits this long before its next connection: at most one attempt a second per
lane, so that a server answering at once (503) is not met with a loop as fast as loopback."""
HOLD_MAX_LIVES = 60
"""Connections one lane opens at most, whatever happens: the attack is bounded in count too."""


async def _until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def _cut(reader: asyncio.StreamReader) -> str:
    """Read until the server lets go; how it did: `answered <status>`, `closed` or `reset`."""
    head = bytearray()
    try:
        while chunk := await reader.read(4096):
            if len(head) < 64:
                head.extend(chunk)
    except OSError:
        return "reset"
    if head.startswith(b"HTTP/1.") and len(parts := head.split(b" ", 2)) > 1:
        return f"answered {parts[1].decode(errors='replace')}"
    return "closed"


async def _occupy(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    kind: str,
    host_header: str,
    release_at: float,
    drip_s: float,
) -> str | None:
    """Hold one connection as `kind` until the server cuts it (how) or `release_at` (None)."""
    watch = asyncio.create_task(_cut(reader))
    try:
        if kind == "slowloris":
            writer.write(f"GET /subscribe HTTP/1.1\r\nHost: {host_header}\r\n".encode())
        line = 0
        while (left := release_at - time.monotonic()) > 0:
            step = min(left, drip_s) if kind == "slowloris" else left
            done, _ = await asyncio.wait({watch}, timeout=step)
            if done:
                return watch.result()
            if kind == "slowloris" and time.monotonic() < release_at:
                line += 1
                try:
                    writer.write(f"X-Drip-{line}: {line}\r\n".encode())
                    await writer.drain()
                except OSError:
                    return "reset"
        return None
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        writer.transport.abort()


async def _hold(
    host: str,
    port: int,
    kind: str,
    count: int,
    open_at: float,
    ramp_s: float,
    end_at: float,
    release_at: float,
    drip_s: float,
) -> dict[str, Any]:
    """`count` lanes, opened evenly over `ramp_s` from `open_at`; each holds one connection at
    a time and opens the next when the server cuts it, until `end_at`; all are let go at
    `release_at`. Times are CLOCK_MONOTONIC, which the coordinating process shares."""
    started_at = time.monotonic()
    connections: list[tuple[float, float | None, str | None]] = []
    failures = {"refused": 0, "connect timed out": 0}
    host_header = f"{host}:{port}"

    async def lane(index: int) -> None:
        await _until(open_at + ramp_s * index / max(1, count))
        for _ in range(HOLD_MAX_LIVES):
            if time.monotonic() >= end_at:
                return
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), HOLD_CONNECT_TIMEOUT_S
                )
            except TimeoutError:
                failures["connect timed out"] += 1
            except OSError:
                failures["refused"] += 1
            else:
                opened = time.monotonic()
                how = await _occupy(reader, writer, kind, host_header, release_at, drip_s)
                connections.append((opened, time.monotonic() if how else None, how))
                if how is None:
                    return
            await asyncio.sleep(HOLD_RECONNECT_PAUSE_S)

    await asyncio.gather(*(lane(i) for i in range(count)))
    return {
        "kind": kind,
        "lanes": count,
        "started_at": started_at,
        "connections": connections,
        "failures": failures,
    }


def run_hold(
    conn: Connection,
    host: str,
    port: int,
    kind: str,
    count: int,
    open_at: float,
    ramp_s: float,
    end_at: float,
    release_at: float,
    drip_s: float,
) -> None:
    """Process entry point: hold `count` connections of `kind` (see `_hold`), send the tally."""
    raise_open_file_limit()
    conn.send(
        uvloop.run(_hold(host, port, kind, count, open_at, ramp_s, end_at, release_at, drip_s))
    )


# -- running one in a process of its own ------------------------------------------------------


class Child:
    """One attacker process and the pipe its tally comes back on."""

    def __init__(self, target: Any, *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self._ours, theirs = context.Pipe(duplex=False)
        self.process = context.Process(target=target, args=(theirs, *args), daemon=True)
        self.process.start()
        theirs.close()

    async def result(self, timeout_s: float) -> dict[str, Any]:
        """Its tally, waiting at most `timeout_s`; an error entry if it died or hung."""
        loop = asyncio.get_running_loop()

        def wait() -> dict[str, Any]:
            try:
                if self._ours.poll(timeout_s):
                    tally: dict[str, Any] = self._ours.recv()
                    return tally
                return {"error": f"no answer within {timeout_s:g} s"}
            except (EOFError, OSError) as error:
                return {"error": f"died: {error!r}"}

        tally = await loop.run_in_executor(None, wait)
        self.process.join(5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)
        self._ours.close()
        return tally
