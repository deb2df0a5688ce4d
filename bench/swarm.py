"""The coordinator's handle on the generator processes: start them, command them, merge replies.

Several processes, because one Python process receiving frames for 2,000 sockets would be the
bottleneck long before either server; each reports its own CPU share so that the report can
say when the generator, not the server, may have set the pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from bench.generator import run_generator
from bench.plan import Layout

__all__ = ["ConnectOutcome", "Swarm"]

SPAWN = multiprocessing.get_context("spawn")
JOIN_TIMEOUT_S = 10.0
REPLY_SLACK_S = 15.0
"""How much longer than its clients' own bound a generator may take to answer `connect`: its
clients that could not get in are then counted as failed, not the run lost to a timeout."""


@dataclass(frozen=True, slots=True)
class ConnectOutcome:
    """One connect step over all generators."""

    ok: int
    failed: int
    seconds: float
    max_cpu_share: float
    errors: list[str]
    handshakes: list[tuple[int, int]]
    """Per client subscribed: ns from TCP connect to 101, and segments sent again meanwhile."""

    @property
    def rate(self) -> float:
        """Clients connected and subscribed per second, from first connect to last subscribed."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0


class _Handle:
    """One generator process and its end of the pipe, read without blocking the event loop."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn

    async def call(self, command: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one command and wait for its reply, both in a worker thread.

        Not with `loop.add_reader`: uvloop makes the pipe non-blocking, and a reply larger than
        the pipe's buffer (the latencies of 100,000 frames are 800 KB) then fails half-read.
        """
        return await asyncio.get_running_loop().run_in_executor(
            None, self._roundtrip, command, timeout_s
        )

    def _roundtrip(self, command: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        try:
            self.conn.send(command)
            if not self.conn.poll(timeout_s):
                raise TimeoutError(
                    f"generator {self.process.pid} did not answer {command['op']!r} "
                    f"within {timeout_s:g} s"
                )
            reply: dict[str, Any] = self.conn.recv()
        except (EOFError, OSError) as error:
            raise RuntimeError(f"generator {self.process.pid} died: {error!r}") from error
        return reply


class Swarm:
    """A fixed set of generator processes sharing one Layout; clients are added in steps."""

    def __init__(self, handles: list[_Handle], layout: Layout) -> None:
        self._handles = handles
        self.layout = layout
        self.clients = 0

    @classmethod
    def start(cls, processes: int, secret: str, layout: Layout) -> Swarm:
        handles = []
        for _ in range(processes):
            ours, theirs = SPAWN.Pipe(duplex=True)
            process = SPAWN.Process(
                target=run_generator, args=(theirs, secret, layout), daemon=True
            )
            process.start()
            theirs.close()
            handles.append(_Handle(process, ours))
        return cls(handles, layout)

    async def _all(self, commands: list[dict[str, Any]], timeout_s: float) -> list[dict[str, Any]]:
        return list(
            await asyncio.gather(
                *(h.call(c, timeout_s) for h, c in zip(self._handles, commands, strict=True))
            )
        )

    async def connect(self, count: int, concurrency: int, timeout_s: float) -> ConnectOutcome:
        """Add `count` clients, split evenly, `concurrency` in flight per generator process."""
        shares = [
            count // len(self._handles) + (i < count % len(self._handles))
            for i in range(len(self._handles))
        ]
        commands, first = [], self.clients
        for share in shares:
            commands.append(
                {
                    "op": "connect",
                    "first": first,
                    "count": share,
                    "concurrency": concurrency,
                    "timeout_s": timeout_s,
                }
            )
            first += share
        waves = 1 + count // max(1, concurrency * len(self._handles))
        step_timeout = timeout_s * waves + REPLY_SLACK_S
        replies = await self._all(commands, step_timeout)
        self.clients = first
        active = [r for r in replies if r["ok"] + r["failed"] > 0]
        seconds = (
            (max(r["t1_ns"] for r in active) - min(r["t0_ns"] for r in active)) / 1e9
            if active
            else 0.0
        )
        return ConnectOutcome(
            ok=sum(r["ok"] for r in replies),
            failed=sum(r["failed"] for r in replies)
            + sum(r["unexpected_closes"] + r["protocol_errors"] for r in replies),
            seconds=seconds,
            max_cpu_share=max(
                (r["cpu_s"] / r["wall_s"] for r in active if r["wall_s"] > 0), default=0.0
            ),
            errors=[e for r in replies for e in r["errors"]],
            handshakes=[tuple(h) for r in replies for h in r["handshakes"]],
        )

    async def arm(self, per_channel: dict[str, int] | None) -> int:
        """Tell every generator what is coming (None: told at `collect`); returns the total
        frames expected (-1 per generator when not yet told)."""
        replies = await self._all(
            [{"op": "arm", "per_channel": per_channel}] * len(self._handles), 30.0
        )
        return sum(r["target"] for r in replies)

    async def status(self, since_ns: int = 0, returns: bool = True) -> dict[str, Any]:
        """Clients subscribed right now over all generators, the sockets closed since
        `since_ns` and subscribed again, and (`returns`) every return after a close so far."""
        command = {"op": "status", "since_ns": since_ns, "returns": returns}
        replies = await self._all([command] * len(self._handles), 30.0)
        return {
            "ready": sum(r["ready"] for r in replies),
            "per_node": [sum(n) for n in zip(*(r["per_node"] for r in replies), strict=True)],
            "clients": sum(r["clients"] for r in replies),
            "displaced": sum(r["displaced"] for r in replies),
            "back": sum(r["back"] for r in replies),
            "back_ns": max(r["back_ns"] for r in replies),
            "returns": [t for r in replies for t in r["returns"]],
            "frames": sum(r["frames"] for r in replies),
            "cpu_s": [r["cpu_s"] for r in replies],
            "failed_attempts": sum((Counter(r["failed_attempts"]) for r in replies), Counter()),
        }

    async def collect(
        self,
        timeout_s: float,
        per_channel: dict[str, int] | None = None,
        last_positions: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Wait for the frames armed (or, now, `per_channel`) and report what each generator saw;
        `last_positions`: where every positioned client's `since` must end."""
        command = {
            "op": "collect",
            "timeout_s": timeout_s,
            "per_channel": per_channel,
            "last_positions": last_positions,
        }
        return await self._all([command] * len(self._handles), timeout_s + 30.0)

    async def close(self) -> None:
        """Disconnect every client and let the processes exit; kill any that hang."""
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            await self._all([{"op": "close"}] * len(self._handles), 30.0)
        for handle in self._handles:
            handle.process.join(JOIN_TIMEOUT_S)
            if handle.process.is_alive():
                handle.process.kill()
                handle.process.join(JOIN_TIMEOUT_S)
            handle.conn.close()
