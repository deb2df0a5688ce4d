"""One server under load, for the scripts beside the main bench (profile, hardening, soak).

`python -m bench` runs fixed scenarios against both servers; the scripts of issue 5 need finer
control over one Bifröst: extra environment, healthy subscribers added in steps, several
broadcast phases in a row with their own latencies, and readings of the server between them.
A `Session` is that, built from the same parts as the bench: `start_server`, the generator
`Swarm`, `broadcast_all`, and /proc readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import urlsplit

from bench.broadcaster import broadcast_all, spread
from bench.keepalive import KeepAliveClient
from bench.plan import Layout, channel_name
from bench.runner import percentile
from bench.servers import (
    TOPOLOGIES,
    RunningServer,
    ServerSpec,
    Topology,
    free_port,
    start_server,
)
from bench.swarm import Swarm
from bench.tokens import new_secret

__all__ = ["Phase", "Session", "fmt_mib", "with_env"]


def with_env(spec: ServerSpec, env: Mapping[str, str]) -> ServerSpec:
    """The same servers with more environment variables (settings) for every node."""
    nodes = tuple(dataclasses.replace(n, env={**n.env, **env}) for n in spec.nodes)
    return dataclasses.replace(spec, nodes=nodes)


def fmt_mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


@dataclass(slots=True)
class Phase:
    """What the healthy subscribers saw in one broadcast phase."""

    broadcasts: int
    frames: int
    expected: int
    latencies_ns: list[int]
    seconds: float
    errors: list[str] = field(default_factory=list)

    def p(self, fraction: float) -> float:
        """A latency percentile, in ms."""
        return percentile(self.latencies_ns, fraction) / 1e6

    @property
    def max_ms(self) -> float:
        return (self.latencies_ns[-1] if self.latencies_ns else 0) / 1e6

    def line(self) -> str:
        return (
            f"{self.frames:,}/{self.expected:,} frames in {self.seconds:.1f} s, latency "
            f"p50 {self.p(0.5):.2f} ms, p99 {self.p(0.99):.2f} ms, max {self.max_ms:.2f} ms"
            + (f", {len(self.errors)} ERROR(S): {self.errors[0]}" if self.errors else "")
        )


class Session:
    """A started server, its stats endpoint and a swarm of checked subscribers."""

    def __init__(
        self,
        server: RunningServer,
        secret: str,
        swarm: Swarm,
        http: KeepAliveClient,
    ) -> None:
        self.server = server
        self.secret = secret
        self.swarm = swarm
        self.http = http

    @classmethod
    async def start(
        cls,
        tag: str,
        *,
        env: Mapping[str, str] | None = None,
        topology: str | Topology = "bifrost",
        channels: int = 1,
        channels_per_client: int = 1,
        reconnect: bool = False,
        reconnect_jitter_s: float = 0.2,
        generators: int = 2,
        home_nodes: int = 0,
    ) -> Self:
        """Start the servers and the generators; with `reconnect`, a subscriber the server
        closes comes back to the next node (positioned if the topology says so); `home_nodes`:
        see `Layout`."""
        secret = new_secret()
        build = TOPOLOGIES[topology] if isinstance(topology, str) else topology
        spec = with_env(build(free_port, secret), env or {})
        server = start_server(spec, tag)
        http = KeepAliveClient.for_url(server.http_url)
        layout = Layout(
            tuple(server.subscribe_urls),
            channels,
            channels_per_client,
            positioned=spec.positioned,
            reconnect=reconnect,
            reconnect_jitter_s=reconnect_jitter_s,
            home_nodes=home_nodes,
        )
        swarm = Swarm.start(generators, secret, layout)
        return cls(server, secret, swarm, http)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.close()
        await self.swarm.close()
        self.server.stop()

    @property
    def pid(self) -> int:
        return self.server.processes[0].pid

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.server.http_url)
        return parts.hostname or "127.0.0.1", parts.port or 80

    async def connect(self, count: int, concurrency: int = 16, timeout_s: float = 30.0) -> None:
        """Add `count` healthy subscribers; raise if any failed to subscribe."""
        outcome = await self.swarm.connect(count, concurrency, timeout_s)
        if outcome.failed:
            raise RuntimeError(f"{outcome.failed} subscribers failed: {outcome.errors[:3]}")

    async def stats(self) -> dict[str, Any]:
        status, body = await self.http.get_json("/info.json")
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"/info.json answered {status} {body!r}")
        return dict(body["stats"])

    def rss(self) -> int:
        return self.server.sample().rss_bytes

    def open_fds(self) -> int:
        """Descriptors open in the server's process tree, from /proc/<pid>/fd."""
        total = 0
        for pid in self.server.sample().pids:
            with contextlib.suppress(OSError):
                total += len(os.listdir(f"/proc/{pid}/fd"))
        return total

    async def readings(self) -> str:
        stats = await self.stats()
        return (
            f"RSS {fmt_mib(self.rss())}, open fds {self.open_fds()}, "
            f"connected {stats.get('connected')}, channels {stats.get('channels')}, "
            f"deliveries {stats.get('deliveries')}"
        )

    async def phase(
        self,
        broadcasts: int,
        *,
        rate: float = 0.0,
        padding_bytes: int = 64,
        connections: int = 4,
        exact_deliveries: bool = True,
        collect_timeout_s: float = 60.0,
    ) -> Phase:
        """Send `broadcasts` over the swarm's channels and check what every subscriber got.

        With `exact_deliveries` False, other sockets (a stalled or churning client) may be on
        the channels too: each answer's deliveries must then be at least the swarm's count.
        """
        layout = self.swarm.layout
        channels = [channel_name(i) for i in range(layout.channels)]
        per_channel = spread(broadcasts, channels)
        subscribers = layout.subscribers_per_channel(self.swarm.clients)
        expected = sum(per_channel[c] * subscribers[c] for c in channels)
        await self.swarm.arm(per_channel)
        sent = await broadcast_all(
            self.server.broadcast_urls,
            self.secret,
            per_channel,
            subscribers,
            connections=connections,
            padding_bytes=padding_bytes,
            rate=rate,
            exact_deliveries=exact_deliveries,
        )
        replies = await self.swarm.collect(collect_timeout_s)
        latencies: array[int] = array("q")
        errors = list(sent.errors)
        for reply in replies:
            latencies.frombytes(reply["latencies"])
            errors.extend(reply["errors"])
        frames = sum(r["frames"] for r in replies)
        faults = {
            "frames missing": expected - frames,
            "frames out of order": sum(r["out_of_order"] for r in replies),
            "duplicate frames": sum(r["duplicates"] for r in replies),
            "frames whose positions do not follow on": sum(r["position_faults"] for r in replies),
            "sockets closed unexpectedly": sum(r["unexpected_closes"] for r in replies),
        }
        errors.extend(f"{n} {what}" for what, n in faults.items() if n)
        return Phase(broadcasts, frames, expected, sorted(latencies), sent.wall_s, errors)


async def wait_until(predicate: Any, timeout_s: float, step_s: float = 0.2) -> bool:
    """Poll an async predicate until it holds or `timeout_s` passes; whether it held."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(step_s)
    return bool(await predicate())
