"""A reconnect storm: every socket of a stopping node back on the other at once, recovered.

    python -m bench.reconnect_storm [--sockets 10000] [--runs 3] [--profile]

Two Bifröst nodes A and B sharing a `redis-server` of their own, history on
(`BIFROST_HISTORY_SIZE=--history`). `--sockets` positioned subscribers (`since` in every
authenticate, kept from every frame's positions) all on node A, each on `--channels-per-client`
of `--channels` channels; `--rate` broadcasts a second go through node B, so that there is
something to recover. Then node A gets SIGTERM: it closes every socket with 1012, and every
one comes back at once (no jitter, as browsers do) to B with its `since`.

Measured: the time from the first 1012 (and from the SIGTERM) until every socket is
subscribed again with every channel `recovered: true` and the last message it missed has
arrived; B's CPU (utime+stime from /proc) over the storm per reconnection. At the end every
subscriber must have every message exactly once and in order, by sequence number and by
position (`bench.recovery`).

Against, in the same run: the Node reference server taking `--sockets` fresh clients of the
same client code, all connecting at once: the time from the first connect until all are
subscribed, its CPU per connection. Ratio = Node's time / the storm's: 1.0 or more means the
storm is over as fast as Node takes as many new sockets. Medians over `--runs`, the order of
the two alternating run by run. `--profile`: py-spy on node B during the storm (one run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, field

import redis
import uvloop

from bench.broadcaster import broadcast_steadily
from bench.plan import channel_name
from bench.procfs import listen_overflows, machine_idle_s, sample_tree, syn_retransmits
from bench.profile import PROFILE_DIR, Recording, have_py_spy, summarize
from bench.recovery import (
    close_lines,
    ms,
    positioned_pair,
    return_lines,
    verify_delivery,
    wait_back,
)
from bench.runner import percentile
from bench.servers import STOP_TIMEOUT_S
from bench.session import Session

__all__ = ["main"]

STORM_TIMEOUT_S = 90.0
"""How long the displaced sockets may take to be subscribed again before the run fails."""
SLOW_HANDSHAKE_NS = 900_000_000
"""The kernel sends a dropped SYN again after 1 s: a handshake slower than this may have
waited for it, or for a busy server."""
PY_SPY_ATTACH_S = 1.0
PROFILE_PHASE = "reconnect-storm"
CORES = os.cpu_count() or 1


@dataclass(slots=True)
class Connects:
    """Many sockets arriving at once on one server, as one run saw them."""

    seconds: float
    cpu_us: float
    """Server CPU per socket."""
    retried: int
    """Sockets whose handshake needed a segment sent again (SYN or upgrade request)."""
    lines: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Span:
    """What the machine did over a span of a run, beyond the server under test."""

    syn_retransmits: int
    listen_overflows: int
    generator_cores: float
    """The busiest generator's CPU, in cores."""
    busy_cores: float
    """Every process's CPU together, in cores (of `os.cpu_count()`)."""

    def line(self) -> str:
        return (
            f"busiest generator {self.generator_cores:.2f} cores; the machine busy "
            f"{self.busy_cores:.2f} of {CORES} cores"
        )


class Counters:
    """Machine-wide TCP and CPU counters and the busiest generator's CPU from one moment on."""

    def __init__(self, generator_cpu_s: list[float]) -> None:
        self.syn0, self.overflows0 = syn_retransmits(), listen_overflows()
        self.idle0 = machine_idle_s()
        self.generators0 = generator_cpu_s
        self.t0 = time.monotonic()

    def close(self, generator_cpu_s: list[float]) -> Span:
        """What the machine did since the start."""
        wall_s = time.monotonic() - self.t0
        cores = max(
            (b - a) / wall_s for a, b in zip(self.generators0, generator_cpu_s, strict=True)
        )
        idle_cores = (machine_idle_s() - self.idle0) / wall_s
        return Span(
            syn_retransmits() - self.syn0,
            listen_overflows() - self.overflows0,
            cores,
            CORES - idle_cores,
        )


def _script_calls(port: int) -> int:
    """Script calls the Redis on `port` has run so far: each history read is one, as is each
    broadcast."""
    with redis.Redis(port=port, socket_timeout=5) as client:
        stats = client.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
    )


async def _storm(args: argparse.Namespace, profile: bool) -> Connects:
    """Node A's sockets coming back to node B at once, and everything checked."""
    session = await Session.start(
        "reconnect-storm",
        env={"BIFROST_HISTORY_SIZE": str(args.history)},
        topology=positioned_pair,
        channels=args.channels,
        channels_per_client=args.channels_per_client,
        reconnect=True,
        reconnect_jitter_s=0.0,
        generators=args.generators,
        home_nodes=1,
    )
    try:
        node_a, node_b = session.server.processes
        redis_server = session.server.service_processes[0]
        redis_port = session.server.spec.services[0].port
        b_url = session.server.broadcast_urls[1]
        await session.connect(args.sockets, timeout_s=60.0)
        await session.swarm.arm(None)
        stop = asyncio.Event()
        channels = [channel_name(i) for i in range(args.channels)]
        broadcasts = asyncio.create_task(
            broadcast_steadily([b_url], session.secret, channels, args.rate, stop)
        )
        await asyncio.sleep(args.steady)

        recording = Recording(node_b.pid, PROFILE_PHASE, native=False) if profile else None
        if recording is not None:
            await asyncio.sleep(PY_SPY_ATTACH_S)
        counters = Counters((await session.swarm.status(returns=False))["cpu_s"])
        a0, b0, redis0 = (sample_tree([p.pid]) for p in (node_a, node_b, redis_server))
        calls0 = _script_calls(redis_port)
        sigterm_ns = time.monotonic_ns()
        node_a.send_signal(signal.SIGTERM)
        back_ns, status = await wait_back(session, sigterm_ns, args.sockets, STORM_TIMEOUT_S)
        a1, b1, redis1 = (sample_tree([p.pid]) for p in (node_a, node_b, redis_server))
        calls = _script_calls(redis_port) - calls0
        span = counters.close(status["cpu_s"])
        if recording is not None:
            recording.stop()
        exited = await _exited(node_a)

        await asyncio.sleep(args.steady)
        stop.set()
        sent = await broadcasts
        delivery = await verify_delivery(session, sent, args.sockets, b_url, args.timeout)
        returns = [r for r in delivery.status["returns"] if r[0] >= sigterm_ns]

        lines, faults = close_lines("A", returns, args.sockets)
        if not exited:
            faults.append(f"node A did not exit within {STOP_TIMEOUT_S:g} s of SIGTERM")
        if not back_ns:
            faults.append(f"not all back within {STORM_TIMEOUT_S:g} s")
        first_close = min((r[0] for r in returns), default=sigterm_ns)
        subscribed = max((r[2] for r in returns), default=back_ns)
        recovered = max((r[5] for r in returns), default=subscribed)
        done = max(subscribed, recovered)
        handshake, retried = _handshake_line([(r[6], r[7]) for r in returns], span)
        per = 1e6 / args.sockets
        lines += [
            f"  first 1012 {ms(first_close - sigterm_ns)} after SIGTERM; all subscribed "
            f"{ms(subscribed - first_close)} after it, all recovered {ms(done - first_close)} "
            f"({ms(done - sigterm_ns)} after SIGTERM)",
            f"  node B: {(b1.cpu_s - b0.cpu_s) * per:.0f} µs CPU per reconnection (user "
            f"{(b1.user_s - b0.user_s) * per:.0f}, kernel {(b1.sys_s - b0.sys_s) * per:.0f}); "
            f"node A (closing them) {(a1.cpu_s - a0.cpu_s) * per:.0f} µs; Redis "
            f"{(redis1.cpu_s - redis0.cpu_s) * per:.0f} µs ({calls:,} script calls in all, history "
            f"reads and broadcasts); {span.line()}",
            handshake,
        ]
        lines += return_lines(returns, args.history)
        lines += delivery.lines
        return Connects(
            seconds=(done - first_close) / 1e9,
            cpu_us=(b1.cpu_s - b0.cpu_s) * per,
            retried=retried,
            lines=lines,
            faults=faults + delivery.faults,
        )
    finally:
        await session.close()


def _handshake_line(handshakes: list[tuple[int, int]], span: Span) -> tuple[str, int]:
    """What the handshakes (TCP connect to 101) took, and how many sent a segment again."""
    took = sorted(h[0] for h in handshakes)
    retried = sum(1 for h in handshakes if h[1])
    slow = sum(1 for t in took if t > SLOW_HANDSHAKE_NS)
    line = (
        f"  handshakes (TCP connect to 101): p50 {ms(percentile(took, 0.5))}, p99 "
        f"{ms(percentile(took, 0.99))}, {slow:,} over {ms(SLOW_HANDSHAKE_NS)}; {retried:,} "
        f"needed a segment sent again (SYN or request; machine-wide {span.syn_retransmits:,} "
        f"SYNs sent again, {span.listen_overflows:,} connections dropped by full accept queues)"
    )
    return line, retried


async def _exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether the node exited within `STOP_TIMEOUT_S` (else it is killed)."""
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, process.wait, STOP_TIMEOUT_S)
        return True
    except subprocess.TimeoutExpired:
        process.kill()
        await loop.run_in_executor(None, process.wait)
        return False


async def _reference(args: argparse.Namespace) -> Connects:
    """The Node reference taking as many fresh sockets of the same clients, all at once."""
    session = await Session.start(
        "reconnect-storm-reference",
        topology="reference",
        channels=args.channels,
        channels_per_client=args.channels_per_client,
        generators=args.generators,
    )
    try:
        counters = Counters((await session.swarm.status(returns=False))["cpu_s"])
        before = session.server.sample()
        outcome = await session.swarm.connect(
            args.sockets, concurrency=args.sockets, timeout_s=60.0
        )
        after = session.server.sample()
        span = counters.close((await session.swarm.status(returns=False))["cpu_s"])
        handshake, retried = _handshake_line(outcome.handshakes, span)
        per = 1e6 / args.sockets
        faults = []
        if outcome.failed:
            faults.append(f"reference: {outcome.failed} sockets failed: {outcome.errors[:3]}")
        lines = [
            f"  all {outcome.ok:,} subscribed {outcome.seconds * 1e3:,.0f} ms after the first "
            f"connect; {(after.cpu_s - before.cpu_s) * per:.0f} µs CPU per connection (user "
            f"{(after.user_s - before.user_s) * per:.0f}, kernel "
            f"{(after.sys_s - before.sys_s) * per:.0f}); {span.line()}",
            handshake,
        ]
        return Connects(
            seconds=outcome.seconds,
            cpu_us=(after.cpu_s - before.cpu_s) * per,
            retried=retried,
            lines=lines,
            faults=faults,
        )
    finally:
        await session.close()


def _median_line(name: str, runs: list[Connects], unit: str) -> str:
    times = [r.seconds for r in runs]
    cpus = [r.cpu_us for r in runs]
    return (
        f"{name}: {statistics.median(times):.2f} s median ("
        + ", ".join(f"{t:.2f}" for t in times)
        + f"), {statistics.median(cpus):.0f} µs CPU per {unit} ("
        + ", ".join(f"{c:.0f}" for c in cpus)
        + "); sockets whose handshake sent a segment again: "
        + ", ".join(f"{r.retried:,}" for r in runs)
    )


async def _run(args: argparse.Namespace) -> int:
    print(
        f"2 Bifröst nodes + Redis, BIFROST_HISTORY_SIZE={args.history}; {args.sockets:,} "
        f"positioned subscribers on node A, {args.channels_per_client} of {args.channels} "
        f"channels each; {args.rate:g} broadcasts/s through node B; SIGTERM A, all back to B "
        f"at once. Against: the Node reference taking {args.sockets:,} at once. "
        f"{args.generators} generator processes; {args.runs} run(s)"
    )
    storms: list[Connects] = []
    references: list[Connects] = []
    faults: list[str] = []
    for run in range(1, args.runs + 1):
        order = ("storm", "reference") if run % 2 else ("reference", "storm")
        for which in order:
            if which == "storm":
                print(f"\nrun {run}/{args.runs} storm: node A's sockets back on node B", flush=True)
                result = await _storm(args, profile=args.profile and not storms)
                storms.append(result)
            else:
                print(f"\nrun {run}/{args.runs} reference: fresh sockets all at once", flush=True)
                result = await _reference(args)
                references.append(result)
            print("\n".join(result.lines), flush=True)
            faults += [f"run {run} {which}: {f}" for f in result.faults]
    if args.profile:
        print(f"\n== py-spy of node B during the first storm ({PROFILE_DIR}/{PROFILE_PHASE}.svg)")
        print("\n".join(summarize(PROFILE_DIR / f"{PROFILE_PHASE}.txt")))
    storm_s = statistics.median(r.seconds for r in storms)
    reference_s = statistics.median(r.seconds for r in references)
    cpu_ratio = statistics.median(r.cpu_us for r in storms) / statistics.median(
        r.cpu_us for r in references
    )
    per_run = [r.seconds / s.seconds for s, r in zip(storms, references, strict=True)]
    print(
        "\n"
        + _median_line("storm (first 1012 to all recovered)", storms, "reconnection")
        + "\n"
        + _median_line("reference (first connect to all subscribed)", references, "connection")
        + f"\nratio Node / storm: {reference_s / storm_s:.2f} (per run: "
        + ", ".join(f"{r:.2f}" for r in per_run)
        + f"; target ≥ 1.0); CPU per socket, storm / Node: {cpu_ratio:.2f}"
    )
    print("\nresult: " + ("PASS" if not faults else "FAIL: " + "; ".join(faults)))
    return 1 if faults else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reconnect_storm", description=__doc__)
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--channels-per-client", type=int, default=1)
    parser.add_argument("--rate", type=float, default=2.0, help="broadcasts per second")
    parser.add_argument("--history", type=int, default=100, help="BIFROST_HISTORY_SIZE")
    parser.add_argument(
        "--steady", type=float, default=3.0, help="seconds of broadcasts before and after"
    )
    parser.add_argument("--generators", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--profile", action="store_true", help="py-spy on node B during the first storm"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds the last frames may take"
    )
    args = parser.parse_args(argv)
    if args.profile and not have_py_spy():
        return 2
    return uvloop.run(_run(args))


if __name__ == "__main__":
    raise SystemExit(main())
