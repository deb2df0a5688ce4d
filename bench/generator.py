"""One load-generator process: thousands of websocket subscribers on one uvloop, each checked.

The coordinator (`bench.swarm`) starts several of these so that no single Python process limits
what the servers can show, and drives them over a pipe with four commands:

- `connect`: open more clients, authenticate each, wait for every `subscribed` frame;
- `arm`: say how many frames each channel will carry, start the CPU and latency clocks;
- `status`: how many clients are subscribed right now, and every return after a close so far;
- `collect`: wait for those frames, then report losses, order faults and latencies;
- `close`: disconnect everything and exit.

Each client runs on picows, whose per-frame cost is a small fraction of any server's, and does
only what correctness needs per frame: one JSON parse, one sequence check (per lane of the
channel: order is defined only among the POSTs of one sender that waits for each answer), one
latency sample, and for positioned clients one position check and the `Object.assign` of the
protocol's client.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import socket
import struct
import time
from array import array
from collections import Counter
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
SERVICE_RESTART = 1012
RETRY_DELAY_S = 0.1
RETRY_DELAY_MAX_S = 1.0
"""Each further attempt waits longer, up to this (and half as much again, at random)."""
RECONNECT_TIMEOUT_S = 10.0
TCP_INFO_BYTES = 104
TOTAL_RETRANS_OFFSET = 100


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
        self.skipped = 0
        self.duplicates = 0
        self.unexpected_closes = 0
        self.protocol_errors = 0
        self.position_faults = 0
        self.not_recovered = 0
        self.returns: list[Return] = []
        self.failed_attempts: Counter[str] = Counter()
        self.closing = False
        self.errors: list[str] = []

    def note(self, error: str) -> None:
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(error)

    def arm(self, target: int) -> None:
        self.latencies_ns = array("q")
        self.frames = 0
        self.first_ns = self.last_ns = 0
        self.all_received.clear()
        self.expect(target)

    def expect(self, target: int) -> None:
        """Set how many frames make the phase complete; -1 while the count is not yet known."""
        self.target = target
        if 0 <= target <= self.frames:
            self.all_received.set()


class Return:
    """One socket's way back after the server closed it: when, how, and what it recovered.

    A frame counts as recovered when it arrives on the new connection but was sent (its `t`)
    before that connection's last `subscribed` frame: the server kept it while the client was
    away, or sent it to the closing socket too late.
    """

    __slots__ = (
        "attempts",
        "caught_up_ns",
        "closed_ns",
        "code",
        "handshake_ns",
        "handshake_retransmits",
        "recovered",
        "subscribed_ns",
    )

    def __init__(self, closed_ns: int, code: int) -> None:
        self.closed_ns = closed_ns
        self.code = code
        self.subscribed_ns = 0
        self.attempts = 0
        self.recovered = 0
        self.caught_up_ns = 0
        self.handshake_ns = 0
        self.handshake_retransmits = 0

    def as_tuple(self) -> tuple[int, int, int, int, int, int, int, int]:
        caught_up = self.caught_up_ns or self.subscribed_ns
        return (
            self.closed_ns,
            self.code,
            self.subscribed_ns,
            self.attempts,
            self.recovered,
            caught_up,
            self.handshake_ns,
            self.handshake_retransmits,
        )


def _total_retransmits(transport: WSTransport) -> int:
    """tcpi_total_retrans of the socket under `transport` (struct tcp_info, linux/tcp.h: 8
    bytes of u8 fields, then u32s, the 24th of which it is)."""
    sock = transport.underlying_transport.get_extra_info("socket")
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES)
    return int(struct.unpack_from("I", info, TOTAL_RETRANS_OFFSET)[0])


class Subscriber(WSListener):  # type: ignore[misc]
    """One browser-like client: authenticate on connect, then check every broadcast it gets.

    Positioned, it keeps `since` as the protocol's client does (`Object.assign(since,
    frame.positions)` on every frame that has positions) and checks that they run on: each
    message one offset past the last in its channel, in the same epoch, and a recovered
    channel's `subscribed` position the one it asked from. With `reconnect`, a socket the
    server closes comes back to the next node with that `since`; its sequence numbers carry on
    across connections, so a message lost or repeated by the move shows as a gap or a
    duplicate. The same object listens to each of its connections in turn.
    """

    def __init__(
        self, tally: Tally, token: str, channels: list[str], layout: Layout, node: int
    ) -> None:
        super().__init__()
        self.tally = tally
        self.token = token
        self.layout = layout
        self.node = node
        self.auth_frame = orjson.dumps({"event": "authenticate", "data": token})
        # Per channel, the next sequence number of each of its lanes that has sent anything.
        self.next_seq: dict[str, dict[int, int]] = {c: {} for c in channels}
        self.since: dict[str, Any] = {}
        self.pending_subscriptions = len(self.next_seq)
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: WSTransport | None = None
        self.returning: Return | None = None
        self.returned: Return | None = None
        self.close_code = 0
        self.closed_ns = 0
        # The last handshake: TCP connect to 101, and the segments the kernel sent again
        # meanwhile (a SYN, or the upgrade request, dropped by a full accept queue).
        self.handshake_ns = 0
        self.handshake_retransmits = 0

    @property
    def ready(self) -> bool:
        """Connected, and every channel's `subscribed` frame received."""
        return (
            self.transport is not None
            and self.returning is None
            and self.subscribed.done()
            and not self.subscribed.cancelled()
            and self.subscribed.exception() is None
        )

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.handshake_retransmits = _total_retransmits(transport)
        self.pending_subscriptions = len(self.next_seq)
        if self.layout.positioned:
            frame = {"event": "authenticate", "data": self.token, "since": self.since}
            transport.send(WSMsgType.TEXT, orjson.dumps(frame))
        else:
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
            self._on_broadcast(message, now)
        elif event == "subscribed":
            self._on_subscribed(message, now)
        elif event != "pong":
            self.tally.protocol_errors += 1
            self.tally.note(f"unexpected frame {message!r}")

    def _on_broadcast(self, message: dict[str, Any], now: int) -> None:
        tally = self.tally
        data = message["data"]
        channel, lane, seq = data["c"], data["l"], data["s"]
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
                tally.skipped += seq - expected
        lanes[lane] = seq + 1
        if self.layout.positioned:
            self._check_positions(message, channel, seq)
        returned = self.returned
        if returned is not None and data["t"] < returned.subscribed_ns:
            returned.recovered += 1
            returned.caught_up_ns = now
        tally.latencies_ns.append(now - data["t"])
        if tally.first_ns == 0:
            tally.first_ns = now
        tally.last_ns = now
        tally.frames += 1
        if tally.frames == tally.target:
            tally.all_received.set()

    def _check_positions(self, message: dict[str, Any], channel: str, seq: int) -> None:
        """Each message is one offset past the last of its channel, in the same epoch."""
        positions = message.get("positions")
        if not isinstance(positions, dict) or channel not in positions:
            self._position_fault(f"{channel}#{seq} without its position: {message!r}")
            return
        for name, position in positions.items():
            last = self.since.get(name)
            if (
                last is None
                or position.get("epoch") != last.get("epoch")
                or position.get("offset") != last.get("offset", -2) + 1
            ):
                self._position_fault(f"{channel}#{seq}: position {position} after {last}")
        self.since.update(positions)

    def _position_fault(self, error: str) -> None:
        self.tally.position_faults += 1
        self.tally.note(error)

    def _on_subscribed(self, message: dict[str, Any], now: int) -> None:
        data = message.get("data")
        # `data` is a JSON-encoded string by contract (the README's client JSON.parses it).
        channel = orjson.loads(data).get("channel") if isinstance(data, str) else None
        if channel not in self.next_seq:
            self.tally.protocol_errors += 1
            self.tally.note(f"bad subscribed frame data {data!r}")
            return
        if self.layout.positioned:
            self._check_subscribed_position(message, channel)
        self.pending_subscriptions -= 1
        if self.pending_subscriptions == 0 and not self.subscribed.done():
            if self.returning is not None:
                self.returning.subscribed_ns = now
                self.returning.handshake_ns = self.handshake_ns
                self.returning.handshake_retransmits = self.handshake_retransmits
                self.returned, self.returning = self.returning, None
            self.subscribed.set_result(None)

    def _check_subscribed_position(self, message: dict[str, Any], channel: str) -> None:
        """A channel `since` named is recovered from where it asked; any other is not flagged."""
        positions = message.get("positions")
        if not isinstance(positions, dict) or channel not in positions:
            self._position_fault(f"subscribed without the channel's position: {message!r}")
            return
        asked = self.since.get(channel)
        if asked is None:
            if "recovered" in message:
                self._position_fault(f"recovered flag for a channel since did not name: {message}")
        elif message.get("recovered") is not True:
            self.tally.not_recovered += 1
            self.tally.note(f"not recovered from {asked}: {message!r}")
        elif positions[channel] != asked:
            self._position_fault(f"recovered from {positions[channel]}, asked from {asked}")
        self.since.update(positions)

    def _closed_by_server(self, transport: WSTransport, frame: WSFrame) -> None:
        code = frame.get_close_code()
        self.close_code, self.closed_ns = int(code), time.monotonic_ns()
        expected = self.layout.reconnect and self.close_code == SERVICE_RESTART
        if not self.tally.closing and not expected:
            self.tally.note(f"server closed a socket: {code} {frame.get_close_reason()!r}")
        transport.send_close(code)
        transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if transport is not self.transport:
            return  # a connection given up on while coming back
        self.transport = None
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError("disconnected before subscribed"))
        if self.tally.closing or self.returning is not None:
            return
        if not self.layout.reconnect:
            self.tally.unexpected_closes += 1
            return
        closed_ns = self.closed_ns if self.close_code else time.monotonic_ns()
        self.returning = Return(closed_ns, self.close_code)
        self.tally.returns.append(self.returning)
        asyncio.get_running_loop().create_task(self._come_back(self.returning))

    async def open(self, url: str, timeout_s: float) -> None:
        """Connect to `url` and wait until every channel is subscribed, all within `timeout_s`
        (SYNs sent again included), so that a client that cannot get in fails and is counted
        before the coordinator stops waiting for its generator."""
        self.subscribed = asyncio.get_running_loop().create_future()
        self.close_code = 0
        started = time.monotonic_ns()
        try:
            async with asyncio.timeout(timeout_s):
                await ws_connect(
                    lambda: self,
                    url,  # type: ignore[misc]
                    websocket_handshake_timeout=timeout_s,
                    read_buffer_init_size=READ_BUFFER_BYTES,
                    # uvloop's own connect, in C: picows' default (aiofastnet's, in Python) took
                    # a quarter of a generator's CPU in a reconnect storm, CPU the servers share.
                    use_aiofastnet=False,
                )
                self.handshake_ns = time.monotonic_ns() - started
                await self.subscribed
        except BaseException:
            if self.transport is not None:
                self.transport.disconnect(graceful=False)
            raise

    async def _come_back(self, returning: Return) -> None:
        """Try the next node, then the one after, until one takes the socket back."""
        await asyncio.sleep(random.uniform(0.0, self.layout.reconnect_jitter_s))
        while not self.tally.closing:
            self.node = (self.node + 1) % len(self.layout.urls)
            returning.attempts += 1
            try:
                await self.open(self.layout.urls[self.node], RECONNECT_TIMEOUT_S)
            except Exception as error:  # refused, 503 while stopping, closed: the next node
                why = f"closed {self.close_code}" if self.close_code else type(error).__name__
                self.tally.failed_attempts[why] += 1
                delay = min(RETRY_DELAY_MAX_S, RETRY_DELAY_S * returning.attempts)
                await asyncio.sleep(delay * random.uniform(1.0, 1.5))
                continue
            return


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
            plans.append((self.layout.node_of(g), token, channels))
        failures = 0
        opened = len(self.clients)
        cpu0, t0 = time.process_time(), time.monotonic_ns()
        queue: Iterator[tuple[int, str, list[str]]] = iter(plans)

        async def worker() -> None:
            nonlocal failures
            for node, token, channels in queue:
                client = Subscriber(self.tally, token, channels, self.layout, node)
                url = self.layout.urls[node]
                try:
                    await client.open(url, timeout_s)
                    self.clients.append(client)
                except Exception as error:  # every failure is counted and reported, none hidden
                    failures += 1
                    self.tally.note(f"connect {url}: {type(error).__name__}: {error}")

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
            "handshakes": [
                (c.handshake_ns, c.handshake_retransmits) for c in self.clients[opened:]
            ],
        }

    def _target(self, per_channel: dict[str, int]) -> int:
        return sum(per_channel.get(c, 0) for client in self.clients for c in client.next_seq)

    def arm(self, per_channel: dict[str, int] | None) -> dict[str, Any]:
        """Expect `per_channel[c]` frames on channel c from now on, for every client of c;
        with None, the counts come with `collect` (broadcasts sent until told to stop)."""
        target = -1 if per_channel is None else self._target(per_channel)
        for client in self.clients:
            for lanes in client.next_seq.values():
                lanes.clear()
        self.expected = per_channel or {}
        self.tally.arm(target)
        self.cpu0, self.wall0 = time.process_time(), time.monotonic()
        return {"target": target}

    def status(self, since_ns: int, returns: bool) -> dict[str, Any]:
        """Clients subscribed right now; how many sockets closed since `since_ns` and how many
        of them are subscribed again; with `returns`, every return after a close so far (a
        tuple each: polled while thousands come back, they would cost the clients' CPU)."""
        per_node = [0] * len(self.layout.urls)
        for client in self.clients:
            if client.ready:
                per_node[client.node] += 1
        displaced = [r.subscribed_ns for r in self.tally.returns if r.closed_ns >= since_ns]
        return {
            "ready": sum(per_node),
            "per_node": per_node,
            "clients": len(self.clients),
            "displaced": len(displaced),
            "back": sum(1 for t in displaced if t),
            "back_ns": max(displaced, default=0),
            "returns": [r.as_tuple() for r in self.tally.returns] if returns else [],
            "frames": self.tally.frames,
            "cpu_s": time.process_time(),
            "failed_attempts": dict(self.tally.failed_attempts),
        }

    async def collect(
        self,
        timeout_s: float,
        per_channel: dict[str, int] | None = None,
        last_positions: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Wait for the armed frames, then compare every client's count with what was sent.

        `per_channel` gives the counts if `arm` did not; with `last_positions` (each channel's
        last broadcast's position, from the POST answers) every positioned client's `since`
        must end there.
        """
        tally = self.tally
        if per_channel is not None:
            self.expected = per_channel
            tally.expect(self._target(per_channel))
        try:
            await asyncio.wait_for(tally.all_received.wait(), timeout_s)
        except TimeoutError:
            tally.note(f"timed out after {timeout_s:g} s with {tally.frames}/{tally.target} frames")
        cpu, wall = time.process_time() - self.cpu0, time.monotonic() - self.wall0
        incomplete = misplaced = missing = 0
        for client in self.clients:
            received = {c: sum(lanes.values()) for c, lanes in client.next_seq.items()}
            if any(n != self.expected.get(c, 0) for c, n in received.items()):
                incomplete += 1
                missing += sum(max(0, self.expected.get(c, 0) - n) for c, n in received.items())
            if last_positions and any(
                client.since.get(c) != last_positions[c]
                for c in client.next_seq
                if c in last_positions
            ):
                misplaced += 1
                tally.note(f"since {client.since} where the last broadcasts were {last_positions}")
        return {
            "frames": tally.frames,
            "target": tally.target,
            "incomplete_clients": incomplete,
            "misplaced_clients": misplaced,
            "out_of_order": tally.out_of_order,
            "lost": tally.skipped + missing,
            "duplicates": tally.duplicates,
            "position_faults": tally.position_faults,
            "not_recovered": tally.not_recovered,
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
        elif op == "status":
            reply = generator.status(command["since_ns"], command["returns"])
        elif op == "collect":
            reply = await generator.collect(
                command["timeout_s"], command.get("per_channel"), command.get("last_positions")
            )
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
