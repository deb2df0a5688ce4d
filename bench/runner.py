"""One run of one scenario against one server: start it, load it, read it, check it, stop it.

Every run gets a fresh server and fresh generator processes, so that memory baselines are
clean and no run inherits another's sockets; the CLI alternates the servers run by run.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.broadcaster import broadcast_all, spread
from bench.keepalive import KeepAliveClient
from bench.plan import Layout, channel_name
from bench.scenarios import Scenario
from bench.servers import RunningServer, ServerSpec, start_server
from bench.swarm import Swarm

__all__ = ["Options", "RunResult", "StepResult", "info_stats", "run_once"]

GENERATOR_CPU_LIMIT = 0.5
"""Above half a core, a generator process may be what sets the pace: the run gets a warning."""
STATS_SETTLE_S = 3.0
"""How long /info.json may take to agree with the clients: a heartbeat period and then some."""


@dataclass(frozen=True, slots=True)
class Options:
    generators: int = 4
    concurrency: int = 16
    connect_timeout_s: float = 30.0
    collect_timeout_s: float = 60.0
    settle_s: float = 1.0
    padding_bytes: int = 64


@dataclass(frozen=True, slots=True)
class StepResult:
    """The server after one connect step of a climb."""

    sockets: int
    rss_mib: float
    rss_kib_per_socket: float
    subscribe_per_s: float
    failed: int


@dataclass(slots=True)
class RunResult:
    scenario: str
    server: str
    metrics: dict[str, float] = field(default_factory=dict)
    steps: list[StepResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def percentile(ordered: array[int] | list[int], fraction: float) -> int:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        return 0
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def info_stats(http: KeepAliveClient) -> dict[str, Any]:
    """The `stats` of /info.json, asked again on a new connection if the idle one was closed."""
    try:
        status, body = await http.get_json("/info.json")
    except (asyncio.IncompleteReadError, ConnectionResetError):
        # The server's keep-alive timeout (5 s) closed the idle connection as the request went
        # out, after a broadcast phase about that long: ask again on a new one.
        await http.close()
        status, body = await http.get_json("/info.json")
    if status != 200 or not isinstance(body, dict) or "stats" not in body:
        raise RuntimeError(f"/info.json answered {status} {body!r}")
    return dict(body["stats"])


async def _stats_when(
    http: KeepAliveClient, agrees: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """/info.json once it agrees, or as it stands after `STATS_SETTLE_S`: across nodes its
    totals come from each node's heartbeat, a second old at most."""
    deadline = time.monotonic() + STATS_SETTLE_S
    while True:
        stats = await info_stats(http)
        if agrees(stats) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.1)


async def _warm_up(server: RunningServer, secret: str) -> None:
    """Touch every node's broadcast path once (no subscribers) so lazy set-up is in the
    baseline."""
    from bench.tokens import broadcast_token

    token = broadcast_token(secret, "bench:warm-up", {"event": "warm-up", "data": None})
    for url in server.broadcast_urls:
        http = KeepAliveClient.for_url(url)
        try:
            status, body = await http.post_json("/broadcast", {"token": token})
        finally:
            await http.close()
        if status != 200:
            raise RuntimeError(f"{server.spec.label}: warm-up at {url} answered {status} {body!r}")


async def _climb(
    scenario: Scenario,
    swarm: Swarm,
    server: RunningServer,
    baseline_rss: int,
    options: Options,
    result: RunResult,
) -> None:
    connected_s, connected, connect_cpu_s = 0.0, 0, 0.0
    for target in scenario.steps:
        requested = target - swarm.clients
        cpu0 = server.sample().cpu_s
        outcome = await swarm.connect(requested, options.concurrency, options.connect_timeout_s)
        connect_cpu_s += server.sample().cpu_s - cpu0
        connected_s += outcome.seconds
        connected += outcome.ok
        result.errors.extend(outcome.errors)
        if outcome.failed:
            result.errors.append(f"{outcome.failed} of {requested} clients failed to subscribe")
        if outcome.max_cpu_share > GENERATOR_CPU_LIMIT:
            result.warnings.append(
                f"a generator used {outcome.max_cpu_share:.2f} cores while connecting"
            )
        result.metrics["gen_cpu_share"] = max(
            result.metrics.get("gen_cpu_share", 0.0), outcome.max_cpu_share
        )
        await asyncio.sleep(options.settle_s)
        server.check_alive()
        rss = server.sample().rss_bytes
        result.steps.append(
            StepResult(
                sockets=connected,
                rss_mib=rss / 2**20,
                rss_kib_per_socket=(rss - baseline_rss) / max(1, connected) / 1024,
                subscribe_per_s=outcome.rate,
                failed=outcome.failed,
            )
        )
    last = result.steps[-1]
    result.metrics["subscribe_per_s"] = connected / connected_s if connected_s else 0.0
    result.metrics["connect_cpu_us_per_socket"] = connect_cpu_s / max(1, connected) * 1e6
    result.metrics["rss_kib_per_socket"] = last.rss_kib_per_socket
    result.metrics["rss_mib"] = last.rss_mib
    result.metrics["sockets"] = float(connected)


async def _broadcast(
    scenario: Scenario,
    swarm: Swarm,
    server: RunningServer,
    secret: str,
    options: Options,
    result: RunResult,
    *,
    broadcasts: int,
    rate: float = 0.0,
    prefix: str = "",
) -> int:
    """Send `broadcasts` and check every frame; returns the frames received.

    Metrics land in `result.metrics` under `prefix`: the closed-loop phase (rate 0) gives the
    throughput figures, a paced phase (rate > 0) the latency below saturation.
    """
    channels = [channel_name(i) for i in range(scenario.channels)]
    per_channel = spread(broadcasts, channels)
    subscribers = swarm.layout.subscribers_per_channel(swarm.clients)
    expected = sum(per_channel[c] * subscribers[c] for c in channels)
    armed = await swarm.arm(per_channel)
    if armed != expected:
        result.errors.append(f"generators expect {armed} frames, the plan says {expected}")
    if scenario.scale:
        server.reset_peak_rss()
    before = server.sample()
    sent = await broadcast_all(
        server.broadcast_urls,
        secret,
        per_channel,
        subscribers,
        connections=scenario.http_connections,
        padding_bytes=options.padding_bytes,
        rate=rate,
        request_timeout_s=scenario.post_timeout_s,
        lanes=scenario.lanes,
    )
    replies = await swarm.collect(options.collect_timeout_s)
    after = server.sample()
    peak_rss = server.peak_rss_bytes() if scenario.scale else 0
    frames = sum(r["frames"] for r in replies)
    result.errors.extend(sent.errors)
    for reply in replies:
        result.errors.extend(reply["errors"])
    faults = {
        "frames missing": expected - frames,
        "clients missing frames": sum(r["incomplete_clients"] for r in replies),
        "frames out of order": sum(r["out_of_order"] for r in replies),
        "duplicate frames": sum(r["duplicates"] for r in replies),
        "frames whose positions do not follow on": sum(r["position_faults"] for r in replies),
        "sockets closed unexpectedly": sum(r["unexpected_closes"] for r in replies),
        "unexpected frames": sum(r["protocol_errors"] for r in replies),
    }
    result.errors.extend(f"{count} {what}" for what, count in faults.items() if count)
    if sent.deliveries != frames:
        result.errors.append(
            f"server reported {sent.deliveries} deliveries, clients got {frames} frames"
        )
    last_ns = max((r["last_ns"] for r in replies), default=0)
    latencies: array[int] = array("q")
    for reply in replies:
        latencies.frombytes(reply["latencies"])
    ordered = sorted(latencies)
    window_s = (last_ns - sent.first_post_ns) / 1e9 if last_ns > sent.first_post_ns else 0.0
    gen_share = max((r["cpu_s"] / r["wall_s"] for r in replies if r["wall_s"] > 0), default=0.0)
    phase = "paced broadcasts" if rate else "broadcasts"
    if gen_share > GENERATOR_CPU_LIMIT:
        result.warnings.append(f"a generator used {gen_share:.2f} cores while receiving {phase}")
    broadcaster_share = sent.cpu_s / sent.wall_s if sent.wall_s else 0.0
    if broadcaster_share > GENERATOR_CPU_LIMIT:
        result.warnings.append(f"the broadcaster used {broadcaster_share:.2f} cores ({phase})")
    if rate and sent.wall_s > 1.5 * broadcasts / rate:
        result.warnings.append(
            f"paced phase took {sent.wall_s:.1f} s for {broadcasts} broadcasts at {rate:g}/s: "
            "the server fell behind the schedule"
        )
    per_frame = 1e6 / frames if frames else 0.0
    metrics = {
        "frames": float(frames),
        "frames_per_s": frames / window_s if window_s else 0.0,
        "cpu_us_per_frame": (after.cpu_s - before.cpu_s) * per_frame,
        "cpu_user_us_per_frame": (after.user_s - before.user_s) * per_frame,
        "cpu_sys_us_per_frame": (after.sys_s - before.sys_s) * per_frame,
        "lat_p50_ms": percentile(ordered, 0.50) / 1e6,
        "lat_p99_ms": percentile(ordered, 0.99) / 1e6,
        "lat_max_ms": (ordered[-1] if ordered else 0) / 1e6,
        "broadcaster_cpu_share": broadcaster_share,
    }
    if scenario.scale:
        metrics |= {
            "burst_s": window_s,
            "burst_cpu_s": after.cpu_s - before.cpu_s,
            "burst_rss_before_mib": before.rss_bytes / 2**20,
            "burst_rss_peak_mib": peak_rss / 2**20,
            "slowest_post_s": sent.slowest_answer_ns / 1e9,
        }
    result.metrics.update({prefix + k: v for k, v in metrics.items()})
    result.metrics["gen_cpu_share"] = max(result.metrics.get("gen_cpu_share", 0.0), gen_share)
    return frames


async def run_once(
    scenario: Scenario, spec: ServerSpec, secret: str, options: Options, tag: str
) -> RunResult:
    """Run `scenario` once against a freshly started `spec`; failures land in `errors`."""
    result = RunResult(scenario.key, spec.key)
    server = start_server(spec, tag)
    swarm: Swarm | None = None
    http = KeepAliveClient.for_url(server.http_url)
    try:
        await _warm_up(server, secret)
        stats0 = await info_stats(http)
        await asyncio.sleep(options.settle_s)
        baseline_rss = server.sample().rss_bytes
        layout = Layout(
            tuple(server.subscribe_urls),
            scenario.channels,
            scenario.channels_per_client,
            positioned=spec.positioned,
        )
        swarm = Swarm.start(options.generators, secret, layout)
        await _climb(scenario, swarm, server, baseline_rss, options, result)
        opened = swarm.clients
        stats1 = await _stats_when(http, lambda s: s.get("connected") == opened)
        if stats1.get("connected") != opened:
            result.errors.append(
                f"/info.json says {stats1.get('connected')} connected, {opened} opened"
            )
        frames = await _broadcast(
            scenario, swarm, server, secret, options, result, broadcasts=scenario.broadcasts
        )
        if scenario.paced_broadcasts:
            frames += await _broadcast(
                scenario,
                swarm,
                server,
                secret,
                options,
                result,
                broadcasts=scenario.paced_broadcasts,
                rate=scenario.paced_rate,
                prefix="paced_",
            )
        stats2 = await _stats_when(
            http, lambda s: s.get("deliveries", 0) - stats0.get("deliveries", 0) == frames
        )
        counted = stats2.get("deliveries", 0) - stats0.get("deliveries", 0)
        if counted != frames:
            result.errors.append(
                f"/info.json counted {counted} deliveries, clients got {frames} frames"
            )
        server.check_alive()
        if scenario.capacity and not result.errors:
            result.metrics["held_all"] = 1.0
        elif scenario.capacity:
            result.metrics["held_all"] = 0.0
    except Exception as error:  # a broken run is reported, and the bench goes on to the next
        result.errors.append(f"run aborted: {type(error).__name__}: {error}")
    finally:
        await http.close()
        if swarm is not None:
            await swarm.close()
        started = time.monotonic()
        server.stop()
        result.metrics["stop_s"] = time.monotonic() - started
    return result
