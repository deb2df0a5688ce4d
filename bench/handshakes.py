"""Fresh subscribers arriving at a steady rate: how many get in, how fast, and what the rest saw.

A newcomer is what a crowded or attacked server fails first: the sockets it already holds keep
their frames, the next user cannot get in. Each probe opens a TCP connection, upgrades it,
authenticates and waits for its `subscribed` frame, then leaves (TCP reset). What it ends with
is one outcome:

- `subscribed`: the whole way through, within `PROBE_TIMEOUT_S`;
- `answered <status>`: the upgrade got an HTTP answer other than 101 (503 when the server is
  full: a clear answer the client can act on);
- `closed after upgrade`: 101, then the socket closed before `subscribed`;
- `reset/refused`: the connection was refused, reset, or closed before any answer;
- `timed out`: no outcome within `PROBE_TIMEOUT_S`.

Raw sockets and hand-made frames, as in `bench.attackers`, so that what the server did is read
off the wire and not through a library's interpretation of it.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from multiprocessing.connection import Connection
from typing import Any

import orjson
import uvloop

from bench.attackers import client_frame
from bench.generator import raise_open_file_limit
from bench.tokens import subscribe_token

__all__ = ["OUTCOMES", "PROBE_CHANNEL", "PROBE_TIMEOUT_S", "run_probes"]

PROBE_TIMEOUT_S = 5.0
PROBE_CHANNEL = "bench:probe"
"""Not a channel of the healthy subscribers, so that their broadcasts' deliveries stay exact."""
OUTCOMES = ("subscribed", "answered 503", "reset/refused", "timed out")
"""The outcomes always reported, even at zero; other answers are added as they occur."""


async def _probe(host: str, port: int, token: str) -> tuple[str, int]:
    """One newcomer: its outcome and the nanoseconds from TCP connect to that outcome."""
    started = time.monotonic_ns()
    writer: asyncio.StreamWriter | None = None
    upgraded = False
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port)
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                (
                    f"GET /subscribe HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1].decode(errors="replace")
            if status != "101":
                return f"answered {status}", time.monotonic_ns() - started
            upgraded = True
            writer.write(client_frame(orjson.dumps({"event": "authenticate", "data": token})))
            await reader.readuntil(b"subscribed")
            return "subscribed", time.monotonic_ns() - started
    except TimeoutError:
        return "timed out", time.monotonic_ns() - started
    except (OSError, asyncio.IncompleteReadError, IndexError):
        outcome = "closed after upgrade" if upgraded else "reset/refused"
        return outcome, time.monotonic_ns() - started
    finally:
        if writer is not None:
            writer.transport.abort()


async def _probes(
    host: str, port: int, secret: str, rate: float, start_at: float, end_at: float
) -> dict[str, Any]:
    started_at = time.monotonic()
    count = max(0, round((end_at - start_at) * rate))
    tokens = [subscribe_token(secret, [PROBE_CHANNEL], f"probe-{i}") for i in range(count)]
    outcomes = dict.fromkeys(OUTCOMES, 0)
    subscribed_ns: list[int] = []

    async def one(index: int) -> None:
        await asyncio.sleep(max(0.0, start_at + index / rate - time.monotonic()))
        outcome, took_ns = await _probe(host, port, tokens[index])
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome == "subscribed":
            subscribed_ns.append(took_ns)

    await asyncio.gather(*(one(i) for i in range(count)))
    return {
        "attempts": count,
        "started_at": started_at,
        "outcomes": outcomes,
        "subscribed_ns": sorted(subscribed_ns),
    }


def run_probes(
    conn: Connection,
    host: str,
    port: int,
    secret: str,
    rate: float,
    start_at: float,
    end_at: float,
) -> None:
    """Process entry point: one newcomer every 1/`rate` s from `start_at` (CLOCK_MONOTONIC) to
    `end_at`, each given `PROBE_TIMEOUT_S`; sends the outcomes and the subscribed times."""
    raise_open_file_limit()
    conn.send(uvloop.run(_probes(host, port, secret, rate, start_at, end_at)))
