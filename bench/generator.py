"""One load-generator process: thousands of websocket subscribers on one uvloop, each checked.

The coordinator (`bench.swarm`) starts several of these so that no single Python process limits
what the servers can show, and drives them over a pipe with four commands:

- `connect`: open more clients, authenticate each, wait for every `subscribed` frame;
- `arm`: say how many frames each channel will carry, start the CPU and latency clocks;
- `collect`: wait for those frames, then report losses, order faults and latencies;
- `close`: disconnect everything and exit.

Each client runs on picows, whose per-frame cost is a small fraction of any server's, and does
only what correctness needs per frame: one JSON parse, one sequence check, one latency sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from array import array
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import orjson
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.plan import BENCH_EVENT, Layout
from bench.tokens import subscribe_token

__all__ = ["run_generator"]

MAX_ERRORS_KEPT = 8
READ_BUFFER_BYTES = 2048
CLOSE_GRACE_S = 5.0


def raise_open_file_limit() -> int:
    """Lift this process's soft RLIMIT_NOFILE to the hard limit: each client is one descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Tally:
    """What this process has seen, kept flat so the per-frame path touches few objects."""

    def __init__(self) -> None:
        self.latencies_ns = array("q")
        self.frames = 0
        self.target = -1
        self.all_received = asyncio.Event()
        self.first_ns = 0
        self.last_ns = 0
        self.out_of_order = 0
        self.duplicates = 0
        self.unexpected_closes = 0
        self.protocol_errors = 0
        self.closing = False
        self.errors: list[str] = []

    def note(self, error: str) -> None:
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(error)

    def arm(self, target: int) -> None:
        self.latencies_ns = array("q")
        self.frames = 0
        self.first_ns = self.last_ns = 0
        self.target = target
        self.all_received.clear()
        if target == 0:
            self.all_received.set()


class Subscriber(WSListener):  # type: ignore[misc]
    """One browser-like client: authenticate on connect, then check every broadcast it gets."""

    def __init__(self, tally: Tally, token: str, channels: list[str]) -> None:
        super().__init__()
        self.tally = tally
        self.auth_frame = orjson.dumps({"event": "authenticate", "data": token})
        # Per channel, the next sequence number of each of its lanes (one per POST in flight).
        self.next_seq: dict[str, dict[int, int]] = {c: {} for c in channels}
        self.pending_subscriptions = len(self.next_seq)
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        transport.send(WSMsgType.TEXT, self.auth_frame)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            if frame.msg_type == WSMsgType.CLOSE:
                self._closed_by_server(transport, frame)
            return
        now = time.monotonic_ns()
        message = orjson.loads(frame.get_payload_as_bytes())
        event = message.get("event")
        if event == BENCH_EVENT:
            self._on_broadcast(message["data"], now)
        elif event == "subscribed":
            self._on_subscribed(message.get("data"))
        elif event != "pong":
            self.tally.protocol_errors += 1
            self.tally.note(f"unexpected frame {message!r}")

    def _on_broadcast(self, data: dict[str, Any], now: int) -> None:
        tally = self.tally
        channel, lane, seq = data["c"], data.get("l", 0), data["s"]
        lanes = self.next_seq.get(channel)
        if lanes is None:
            tally.protocol_errors += 1
            tally.note(f"frame for channel {channel} the client did not subscribe to")
            return
        expected = lanes.get(lane, 0)
        if seq != expected:
            if seq < expected:
                tally.duplicates += 1
            else:
                tally.out_of_order += 1
        lanes[lane] = seq + 1
        tally.latencies_ns.append(now - data["t"])
        if tally.first_ns == 0:
            tally.first_ns = now
        tally.last_ns = now
        tally.frames += 1
        if tally.frames == tally.target:
            tally.all_received.set()

    def _on_subscribed(self, data: object) -> None:
        # `data` is a JSON-encoded string by contract (the README's client JSON.parses it).
        channel = orjson.loads(data).get("channel") if isinstance(data, str) else None
        if channel not in self.next_seq:
            self.tally.protocol_errors += 1
            self.tally.note(f"bad subscribed frame data {data!r}")
            return
        self.pending_subscriptions -= 1
        if self.pending_subscriptions == 0 and not self.subscribed.done():
            self.subscribed.set_result(None)

    def _closed_by_server(self, transport: WSTransport, frame: WSFrame) -> None:
        if not self.tally.closing:
            self.tally.note(
                f"server closed a socket: {frame.get_close_code()} {frame.get_close_reason()!r}"
            )
        transport.send_close(frame.get_close_code())
        transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.tally.closing:
            self.tally.unexpected_closes += 1
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError("disconnected before subscribed"))


class Generator:
    """The state of this process across commands: its clients and what they have seen."""

    def __init__(self, secret: str, layout: Layout) -> None:
        self.secret = secret
        self.layout = layout
        self.tally = Tally()
        self.clients: list[Subscriber] = []
        self.expected: dict[str, int] = {}
        self.cpu0 = 0.0
        self.wall0 = 0.0

    async def connect(
        self, first: int, count: int, concurrency: int, timeout_s: float
    ) -> dict[str, Any]:
        """Open clients first..first+count-1, `concurrency` of them at a time in flight.

        In flight means from TCP connect to the last `subscribed` frame, so the rate measured is
        the whole path a browser takes. Tokens are signed before the clock starts.
        """
        plans = []
        for g in range(first, first + count):
            channels = self.layout.channels_of(g)
            token = subscribe_token(self.secret, channels, f"client-{g}")
            plans.append((self.layout.url_of(g), token, channels))
        failures = 0
        cpu0, t0 = time.process_time(), time.monotonic_ns()
        queue: Iterator[tuple[str, str, list[str]]] = iter(plans)

        async def worker() -> None:
            nonlocal failures
            for url, token, channels in queue:
                client = Subscriber(self.tally, token, channels)
                try:
                    await ws_connect(
                        lambda c=client: c,
                        url,  # type: ignore[misc]
                        websocket_handshake_timeout=timeout_s,
                        read_buffer_init_size=READ_BUFFER_BYTES,
                    )
                    await asyncio.wait_for(client.subscribed, timeout_s)
                    self.clients.append(client)
                except Exception as error:  # every failure is counted and reported, none hidden
                    failures += 1
                    self.tally.note(f"connect {url}: {type(error).__name__}: {error}")
                    if client.transport is not None:
                        client.transport.disconnect(graceful=False)

        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, count)))))
        t1 = time.monotonic_ns()
        return {
            "ok": count - failures,
            "failed": failures,
            "t0_ns": t0,
            "t1_ns": t1,
            "cpu_s": time.process_time() - cpu0,
            "wall_s": (t1 - t0) / 1e9,
            "errors": list(self.tally.errors),
            "unexpected_closes": self.tally.unexpected_closes,
            "protocol_errors": self.tally.protocol_errors,
        }

    def arm(self, per_channel: dict[str, int]) -> dict[str, Any]:
        """Expect `per_channel[c]` frames on channel c from now on, for every client of c."""
        target = sum(per_channel.get(c, 0) for client in self.clients for c in client.next_seq)
        for client in self.clients:
            for channel in client.next_seq:
                client.next_seq[channel] = {}
        self.expected = per_channel
        self.tally.arm(target)
        self.cpu0, self.wall0 = time.process_time(), time.monotonic()
        return {"target": target}

    async def collect(self, timeout_s: float) -> dict[str, Any]:
        """Wait for the armed frames, then compare every client's count with what was sent."""
        tally = self.tally
        try:
            await asyncio.wait_for(tally.all_received.wait(), timeout_s)
        except TimeoutError:
            tally.note(f"timed out after {timeout_s:g} s with {tally.frames}/{tally.target} frames")
        cpu, wall = time.process_time() - self.cpu0, time.monotonic() - self.wall0
        incomplete = 0
        for client in self.clients:
            received = client.next_seq.items()
            if any(sum(lanes.values()) != self.expected.get(c, 0) for c, lanes in received):
                incomplete += 1
        return {
            "frames": tally.frames,
            "target": tally.target,
            "incomplete_clients": incomplete,
            "out_of_order": tally.out_of_order,
            "duplicates": tally.duplicates,
            "unexpected_closes": tally.unexpected_closes,
            "protocol_errors": tally.protocol_errors,
            "first_ns": tally.first_ns,
            "last_ns": tally.last_ns,
            "latencies": tally.latencies_ns.tobytes(),
            "cpu_s": cpu,
            "wall_s": wall,
            "errors": list(tally.errors),
        }

    async def close(self) -> dict[str, Any]:
        self.tally.closing = True
        for client in self.clients:
            if client.transport is not None:
                client.transport.disconnect()
        waits = [c.transport.wait_disconnected() for c in self.clients if c.transport is not None]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), CLOSE_GRACE_S)
        return {"closed": len(self.clients)}


async def _serve(conn: Connection, secret: str, layout: Layout) -> None:
    """Answer the coordinator's commands in order until `close`.

    The pipe is read and written in threads with blocking calls: `loop.add_reader` would let
    uvloop make it non-blocking, and a large reply would then fail half-written.
    """
    loop = asyncio.get_running_loop()
    generator = Generator(secret, layout)
    while True:
        try:
            command = await loop.run_in_executor(None, conn.recv)
        except (EOFError, OSError):
            command = {"op": "close"}
        op = command["op"]
        if op == "connect":
            reply = await generator.connect(
                command["first"], command["count"], command["concurrency"], command["timeout_s"]
            )
        elif op == "arm":
            reply = generator.arm(command["per_channel"])
        elif op == "collect":
            reply = await generator.collect(command["timeout_s"])
        elif op == "close":
            reply = await generator.close()
        else:
            reply = {"error": f"unknown op {op!r}"}
        try:
            await loop.run_in_executor(None, conn.send, reply)
        except (BrokenPipeError, EOFError, OSError):
            return
        if op == "close":
            return


def run_generator(conn: Connection, secret: str, layout: Layout) -> None:
    """Process entry point (multiprocessing target)."""
    raise_open_file_limit()
    uvloop.run(_serve(conn, secret, layout))
