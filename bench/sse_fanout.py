"""Event streams against websockets in the same run: server CPU per delivered event, and RSS
per idle subscriber.

    .venv/bin/python -m bench.sse_fanout                 # 2,000 subscribers, 5 runs of each
    .venv/bin/python -m bench.sse_fanout --quick         # 300 subscribers, 1 run

Each run starts a fresh `--single-process` Bifröst (in-process broker, history off, as the
main benchmark's scenario a), connects the subscribers of one transport to one channel,
broadcasts one message at a time and reads the server's CPU (utime+stime of its tree, from
/proc) over the broadcasts, divided by the events the clients received; then, with the same
subscribers idle, the server's RSS above its reading before they connected. The transports
alternate run by run (websockets first on odd runs), so that drift hits both alike, and the
figures are medians. Both transports are read by the same kind of client: an asyncio
protocol per connection in 4 generator processes, one JSON parse and one sequence check per
message, so that the clients cost the shared cores the same.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import multiprocessing
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import orjson

from bench.keepalive import KeepAliveClient
from bench.procfs import sample_tree
from bench.servers import bifrost_single, free_port, start_server
from bench.tokens import broadcast_token, new_secret, subscribe_token

CHANNEL = "fanout"
GENERATORS = 4
CONNECT_CONCURRENCY = 32
TIMEOUT_S = 60.0
IDLE_SETTLE_S = 1.0
TARGET_RATIO = 1.3


@dataclass(frozen=True)
class Reading:
    transport: str
    subscribers: int
    events: int
    cpu_s: float
    user_s: float
    rss_per_subscriber: float

    @property
    def cpu_per_event_us(self) -> float:
        return self.cpu_s / self.events * 1e6

    @property
    def user_per_event_us(self) -> float:
        return self.user_s / self.events * 1e6


# -- the generator processes -----------------------------------------------------------------


class Subscriber(asyncio.Protocol):
    """One connection of either transport: subscribes, then counts the messages it reads and
    checks they come in order."""

    def __init__(self, transport_kind: str, token: str, port: int, ready: asyncio.Event) -> None:
        self.kind = transport_kind
        self.token = token
        self.port = port
        self.ready = ready
        self.buffer = b""
        self.head_done = False
        self.subscribed = False
        self.received = 0
        self.next_seq = 0
        self.error: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no asyncio.Transport subclass, but have its methods.
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        if self.kind == "sse":
            request = (
                f"GET /subscribe?token={self.token} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                "Accept: text/event-stream\r\n\r\n"
            )
        else:
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET /subscribe HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
        transport.write(request.encode())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.head_done:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.buffer[: self.buffer.find(b"\r\n")]
            self.buffer = self.buffer[end + 4 :]
            self.head_done = True
            if self.kind == "ws":
                assert b" 101 " in status, status
                self.transport.write(
                    _masked(orjson.dumps({"event": "authenticate", "data": self.token}))
                )
            else:
                assert b" 200 " in status, status
        if self.kind == "sse":
            self._events()
        else:
            self._frames()

    def _events(self) -> None:
        buffer = self.buffer
        start = 0
        while (end := buffer.find(b"\n\n", start)) >= 0:
            block = buffer[start:end]
            start = end + 2
            at = block.find(b"data: ")
            if at >= 0:
                self._message(
                    block[at + 6 : block.find(b"\n", at) if b"\n" in block[at:] else None]
                )
        self.buffer = buffer[start:]

    def _frames(self) -> None:
        buffer = self.buffer
        start = 0
        while len(buffer) - start >= 2:
            length = buffer[start + 1] & 0x7F
            header = 2
            if length == 126:
                if len(buffer) - start < 4:
                    break
                length, header = int.from_bytes(buffer[start + 2 : start + 4], "big"), 4
            elif length == 127:
                if len(buffer) - start < 10:
                    break
                length, header = int.from_bytes(buffer[start + 2 : start + 10], "big"), 10
            if len(buffer) - start < header + length:
                break
            if buffer[start] & 0x0F == 1:
                self._message(buffer[start + header : start + header + length])
            start += header + length
        self.buffer = buffer[start:]

    def _message(self, payload: bytes) -> None:
        message = orjson.loads(payload)
        if message["event"] == "subscribed":
            self.subscribed = True
            self.ready.set()
            return
        if message["data"] != self.next_seq:
            self.error = f"got {message['data']}, expected {self.next_seq}"
        self.next_seq += 1
        self.received += 1


def _masked(payload: bytes) -> bytes:
    mask = os.urandom(4)
    length = len(payload)
    header = (
        bytes([0x81, 0x80 | length])
        if length < 126
        else bytes([0x81, 0xFE]) + length.to_bytes(2, "big")
    )
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _generator_main(pipe: Connection, kind: str, port: int, tokens: list[str]) -> None:
    loop = asyncio.get_running_loop()
    subscribers: list[Subscriber] = []
    semaphore = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(token: str) -> None:
        async with semaphore:
            ready = asyncio.Event()
            _, protocol = await loop.create_connection(
                lambda: Subscriber(kind, token, port, ready), "127.0.0.1", port
            )
            await asyncio.wait_for(ready.wait(), TIMEOUT_S)
            subscribers.append(protocol)

    await asyncio.gather(*(one(token) for token in tokens))
    pipe.send(("ready", len(subscribers)))
    while True:
        command = await loop.run_in_executor(None, pipe.recv)
        if command == "count":
            errors = [s.error for s in subscribers if s.error]
            pipe.send(("count", sum(s.received for s in subscribers), errors[:3]))
        elif command == "close":
            for subscriber in subscribers:
                subscriber.transport.close()
            pipe.send(("closed",))
            return


def _generator(pipe: Connection, kind: str, port: int, tokens: list[str]) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.run(_generator_main(pipe, kind, port, tokens))
    except ImportError:
        asyncio.run(_generator_main(pipe, kind, port, tokens))


# -- one run ---------------------------------------------------------------------------------


async def one_run(
    kind: str, subscribers: int, broadcasts: int, secret: str, tag: str, history: int
) -> Reading:
    spec = bifrost_single(free_port, secret)
    if history:
        node = spec.nodes[0]
        env = {**node.env, "BIFROST_HISTORY_SIZE": str(history)}
        spec = dataclasses.replace(spec, nodes=(dataclasses.replace(node, env=env),))
    server = start_server(spec, tag)
    pipes: list[Connection] = []
    processes: list[multiprocessing.Process] = []
    try:
        http = KeepAliveClient.for_url(server.http_url)
        port = spec.nodes[0].port
        await http.post_json(
            "/broadcast", {"token": broadcast_token(secret, "warm-up", {"event": "w", "data": 0})}
        )
        await asyncio.sleep(0.5)
        before_connect = sample_tree(server.pids)
        tokens = [subscribe_token(secret, [CHANNEL], f"{kind}-{n}") for n in range(subscribers)]
        for g in range(GENERATORS):
            ours, theirs = multiprocessing.Pipe()
            process = multiprocessing.Process(
                target=_generator, args=(theirs, kind, port, tokens[g::GENERATORS]), daemon=True
            )
            process.start()
            pipes.append(ours)
            processes.append(process)
        connected = sum([await asyncio.to_thread(_answer, pipe, "ready") for pipe in pipes])
        assert connected == subscribers, connected
        await asyncio.sleep(IDLE_SETTLE_S)
        idle = sample_tree(server.pids)
        rss_per = (idle.rss_bytes - before_connect.rss_bytes) / subscribers
        _, stats = await http.get_json("/info.json")
        key = "event_streams" if kind == "sse" else "websockets"
        assert stats["stats"][key] == subscribers, stats
        start = sample_tree(server.pids)
        for n in range(broadcasts):
            token = broadcast_token(secret, CHANNEL, {"event": "b", "data": n})
            status, answer = await http.post_json("/broadcast", {"token": token})
            assert status == 200 and answer["deliveries"] == subscribers, answer
        expected = subscribers * broadcasts
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            counts = [await asyncio.to_thread(_ask, pipe, "count") for pipe in pipes]
            received = sum(c[1] for c in counts)
            errors = [e for c in counts for e in c[2]]
            assert not errors, errors
            if received >= expected:
                break
            assert time.monotonic() < deadline, f"{received} of {expected} received"
            await asyncio.sleep(0.05)
        end = sample_tree(server.pids)
        assert received == expected, (received, expected)
        await http.close()
        return Reading(
            kind,
            subscribers,
            received,
            end.cpu_s - start.cpu_s,
            end.user_s - start.user_s,
            rss_per,
        )
    finally:
        for pipe in pipes:
            with contextlib.suppress(EOFError, OSError):
                await asyncio.to_thread(_ask, pipe, "close")
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.kill()
        server.stop()


def _ask(pipe: Connection, command: str) -> tuple[object, ...]:
    pipe.send(command)
    answer: tuple[object, ...] = pipe.recv()
    return answer


def _answer(pipe: Connection, expected: str) -> int:
    answer = pipe.recv()
    assert answer[0] == expected, answer
    return int(answer[1])


# -- the report ------------------------------------------------------------------------------


def report(readings: list[Reading], history: int) -> str:
    def median(kind: str, figure: str) -> float:
        return statistics.median(getattr(r, figure) for r in readings if r.transport == kind)

    rows = [
        ("server CPU per delivered message, µs", "cpu_per_event_us", 2),
        ("… of which user time, µs", "user_per_event_us", 2),
        ("RSS per idle subscriber, KiB", "rss_per_subscriber", 2),
    ]
    runs = sum(1 for r in readings if r.transport == "sse")
    subscribers = readings[0].subscribers
    lines = [
        f"{subscribers:,} subscribers on one channel, "
        + (f"history of {history}" if history else "history off")
        + f", medians of {runs} runs each",
        "",
        "| | websocket | event stream | ratio |",
        "|---|---:|---:|---:|",
    ]
    for label, figure, digits in rows:
        ws, sse = median("ws", figure), median("sse", figure)
        if figure == "rss_per_subscriber":
            ws, sse = ws / 1024, sse / 1024
        lines.append(f"| {label} | {ws:.{digits}f} | {sse:.{digits}f} | {sse / ws:.2f} |")
    ratio = median("sse", "cpu_per_event_us") / median("ws", "cpu_per_event_us")
    verdict = "met" if ratio <= TARGET_RATIO else "missed"
    lines += ["", f"CPU per message ratio {ratio:.2f}: target ≤ {TARGET_RATIO} {verdict}."]
    lines += [
        "",
        "Each run: " + ", ".join(f"{r.transport} {r.cpu_per_event_us:.2f} µs" for r in readings),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sse_fanout", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="300 subscribers, 1 run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--broadcasts", type=int, default=200)
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        help="BIFROST_HISTORY_SIZE: event streams are then positioned (ids and positions), "
        "websockets (which send no since) still get the original's frames",
    )
    args = parser.parse_args(argv)
    runs, subscribers = (1, 300) if args.quick else (args.runs, args.subscribers)
    secret = new_secret()
    readings = []
    for run in range(1, runs + 1):
        order = ("ws", "sse") if run % 2 else ("sse", "ws")
        for kind in order:
            reading = asyncio.run(
                one_run(
                    kind,
                    subscribers,
                    args.broadcasts,
                    secret,
                    f"sse-fanout-{kind}-{run}",
                    args.history,
                )
            )
            print(
                f"run {run} {kind}: {reading.cpu_per_event_us:.2f} µs/message, "
                f"{reading.rss_per_subscriber / 1024:.2f} KiB/subscriber",
                flush=True,
            )
            readings.append(reading)
    print()
    print(report(readings, args.history))
    return 0


if __name__ == "__main__":
    sys.exit(main())
