"""Issue 14: a rolling restart of two nodes, and not one message lost, repeated or reordered.

    python -m bench.rolling_restart [--subscribers 2000] [--channels 10] [--rate 50]

Two Bifröst nodes sharing a `redis-server` of their own (free loopback ports), history on
(`--history` messages per channel). `--subscribers` positioned subscribers (`since` in every
authenticate, kept with `Object.assign` from every frame's positions) spread over both nodes,
each on `--channels-per-client` of `--channels` channels. `--rate` broadcasts a second go to
the channels in turn, POSTed round-robin to the nodes and retried on the next one when a node
refuses (503 while stopping) or cannot be reached. After `--steady` seconds node A gets
SIGTERM: its sockets get 1012 and come back to the next live node with their `since`; once A
has exited it is started again on its port, and `--steady` seconds later the same is done to
node B; the broadcasts stop `--steady` seconds after that.

Every subscriber must end with every message of its channels exactly once and in order, by
sequence number and by position (each message one offset past the last of its channel, every
channel it named recovered from where it asked, its `since` at the end the last broadcast's
position). Prints per restart the time until every socket was subscribed again, their time
away and the recovery rate; exit status 1 (FAIL) on any loss, duplicate or other fault.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvloop

from bench.broadcaster import SteadyOutcome, broadcast_steadily
from bench.keepalive import KeepAliveClient
from bench.plan import channel_name
from bench.procfs import listen_overflows, sample_tree
from bench.runner import percentile
from bench.servers import STOP_TIMEOUT_S, ServerSpec, bifrost_redis_pair, restart_node
from bench.session import Session, wait_until

__all__ = ["main"]

NODE_NAMES = ("A", "B")
SERVICE_RESTART = 1012
POLL_S = 0.05
QUIET_S = 2.0
BACK_TIMEOUT_S = 60.0
"""How long the displaced sockets may take to be subscribed again before the run fails."""


def positioned_pair(next_port: Callable[[], int], secret: str) -> ServerSpec:
    """Two nodes and their Redis, measured with positioned subscribers."""
    return dataclasses.replace(bifrost_redis_pair(next_port, secret), positioned=True)


@dataclass(slots=True)
class Restart:
    """One node's restart, as the driver saw it; the clients' side comes from their returns."""

    name: str
    displaced: int
    sigterm_ns: int
    killed: bool = False
    exited_ns: int = 0
    ready_ns: int = 0
    back_ns: int = 0
    returns: list[tuple[int, ...]] = field(default_factory=list)
    # Over the return (SIGTERM to every socket back): the cores the nodes still up and Redis
    # used, the busiest generator's, and the connections the kernel dropped for full queues.
    server_cores: float = 0.0
    generator_cores: float = 0.0
    listen_overflows: int = 0


def _ms(ns: float) -> str:
    return f"{ns / 1e6:,.0f} ms"


async def _all_back(session: Session, restart: Restart, others: list[int]) -> None:
    """Wait until every socket the node had at SIGTERM is subscribed again somewhere; note
    what the return cost the processes `others` (the nodes still up, Redis) and the
    generators."""
    status = await session.swarm.status()
    cpu0, generators0, overflows0 = sample_tree(others).cpu_s, status["cpu_s"], listen_overflows()
    deadline = time.monotonic() + BACK_TIMEOUT_S
    while time.monotonic() < deadline:
        status = await session.swarm.status()
        back = [r for r in status["returns"] if r[0] >= restart.sigterm_ns]
        if (
            len(back) >= restart.displaced
            and all(r[2] for r in back)
            and status["ready"] == status["clients"]
        ):
            restart.back_ns = max((r[2] for r in back), default=restart.sigterm_ns)
            break
        await asyncio.sleep(POLL_S)
    wall_s = (time.monotonic_ns() - restart.sigterm_ns) / 1e9
    restart.server_cores = (sample_tree(others).cpu_s - cpu0) / wall_s
    restart.generator_cores = max(
        (b - a) / wall_s for a, b in zip(generators0, status["cpu_s"], strict=True)
    )
    restart.listen_overflows = listen_overflows() - overflows0


async def _restart(session: Session, index: int) -> Restart:
    """SIGTERM node `index`, start it again once it has exited, wait until all are back."""
    loop = asyncio.get_running_loop()
    server = session.server
    others = [p.pid for i, p in enumerate(server.processes) if i != index]
    others += [p.pid for p in server.service_processes]
    status = await session.swarm.status()
    restart = Restart(NODE_NAMES[index], status["per_node"][index], time.monotonic_ns())
    process = server.processes[index]
    process.send_signal(signal.SIGTERM)
    back = asyncio.create_task(_all_back(session, restart, others))
    try:
        await loop.run_in_executor(None, process.wait, STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        restart.killed = True
        process.kill()
        await loop.run_in_executor(None, process.wait)
    restart.exited_ns = time.monotonic_ns()
    await loop.run_in_executor(None, restart_node, server, index)
    restart.ready_ns = time.monotonic_ns()
    await back
    return restart


def _describe(restart: Restart, history: int) -> tuple[list[str], list[str]]:
    """The lines printed for one restart, and its faults."""
    returns = restart.returns
    faults: list[str] = []
    exited = "still running, killed" if restart.killed else "exited"
    lines = [
        f"node {restart.name}: SIGTERM with {restart.displaced} sockets on it; {exited} after "
        f"{_ms(restart.exited_ns - restart.sigterm_ns)}, ready again "
        f"{_ms(restart.ready_ns - restart.exited_ns)} later"
    ]
    if restart.killed:
        faults.append(f"node {restart.name} did not exit within {STOP_TIMEOUT_S:g} s of SIGTERM")
    codes = Counter(r[1] for r in returns)
    lines.append(
        f"  {len(returns)} sockets closed ("
        + ", ".join(f"{n} with {code or 'no close frame'}" for code, n in sorted(codes.items()))
        + ")"
    )
    if not returns:
        faults.append(f"node {restart.name}: no socket came back")
        return lines, faults
    if set(codes) != {SERVICE_RESTART}:
        faults.append(f"node {restart.name}: sockets closed otherwise than 1012: {dict(codes)}")
    if len(returns) != restart.displaced:
        faults.append(f"node {restart.name}: {len(returns)} closed of {restart.displaced} on it")
    if restart.back_ns:
        lines.append(
            f"  all subscribed again {_ms(restart.back_ns - restart.sigterm_ns)} after SIGTERM; "
            f"meanwhile the other node and Redis used {restart.server_cores:.2f} cores, the "
            f"busiest generator {restart.generator_cores:.2f}; {restart.listen_overflows:,} "
            "connections dropped by full accept queues (machine-wide)"
        )
    else:
        faults.append(f"node {restart.name}: not all back within {BACK_TIMEOUT_S:g} s")
    away = sorted(r[2] - r[0] for r in returns if r[2])
    attempts = [r[3] for r in returns]
    lines.append(
        f"  time away per socket (close to subscribed): p50 {_ms(percentile(away, 0.5))}, "
        f"p99 {_ms(percentile(away, 0.99))}, max {_ms(away[-1] if away else 0)}; "
        f"attempts: {sum(attempts)} for {len(attempts)} sockets, at most {max(attempts)}"
    )
    recovering = [r for r in returns if r[4]]
    recovered = sum(r[4] for r in returns)
    if history and recovering:
        first = min(r[2] for r in recovering)
        last = max(r[5] for r in recovering)
        window = last - first
        rate = recovered / (window / 1e9) if window > 0 else float("inf")
        replay = sorted(r[5] - r[2] for r in recovering)
        caught_up = sorted(r[5] - r[0] for r in recovering)
        lines += [
            f"  recovered {recovered:,} messages on {len(recovering)} sockets (at most "
            f"{max(r[4] for r in returns)} on one, history {history}) from the first socket "
            f"back to the last recovered frame, {_ms(window)}: {rate:,.0f} messages/s",
            f"  replay per socket (subscribed to last recovered frame): p50 "
            f"{_ms(percentile(replay, 0.5))}, p99 {_ms(percentile(replay, 0.99))}; close to "
            f"caught up: p50 {_ms(percentile(caught_up, 0.5))}, "
            f"p99 {_ms(percentile(caught_up, 0.99))}",
        ]
    elif history:
        lines.append("  recovered no message (none was sent while they were away)")
    return lines, faults


def _delivery_faults(replies: Sequence[dict[str, Any]], sent: SteadyOutcome) -> list[str]:
    counts = {
        "messages lost": sum(r["lost"] for r in replies),
        "duplicate messages": sum(r["duplicates"] for r in replies),
        "messages out of order (gaps)": sum(r["out_of_order"] for r in replies),
        "frames whose positions do not follow on": sum(r["position_faults"] for r in replies),
        "channels not recovered": sum(r["not_recovered"] for r in replies),
        "subscribers whose since does not end at the last broadcast": sum(
            r["misplaced_clients"] for r in replies
        ),
        "subscribers missing messages": sum(r["incomplete_clients"] for r in replies),
        "unexpected frames": sum(r["protocol_errors"] for r in replies),
        "broadcasts no node accepted, or refused otherwise than 503": sent.failures,
        "POST answers whose positions do not follow on": sent.position_faults,
    }
    return [f"{n:,} {what}" for what, n in counts.items() if n]


async def _run(args: argparse.Namespace) -> int:
    positioned = args.history > 0
    session = await Session.start(
        "rolling-restart",
        env={"BIFROST_HISTORY_SIZE": str(args.history)},
        topology=positioned_pair if positioned else bifrost_redis_pair,
        channels=args.channels,
        channels_per_client=args.channels_per_client,
        reconnect=True,
        reconnect_jitter_s=args.jitter,
        generators=args.generators,
    )
    faults: list[str] = []
    try:
        channels = [channel_name(i) for i in range(args.channels)]
        print(
            f"2 Bifröst nodes + Redis, BIFROST_HISTORY_SIZE={args.history}; "
            f"{args.subscribers} {'positioned' if positioned else 'unpositioned'} subscribers, "
            f"{args.channels_per_client} of {args.channels} channels each, back within "
            f"{args.jitter:g} s of a close; {args.rate:g} broadcasts/s"
        )
        await session.connect(args.subscribers)
        await session.swarm.arm(None)
        stop = asyncio.Event()
        broadcasts = asyncio.create_task(
            broadcast_steadily(
                session.server.broadcast_urls,
                session.secret,
                channels,
                args.rate,
                stop,
                positioned=positioned,
            )
        )
        await asyncio.sleep(args.steady)
        restarts = []
        for index in range(len(NODE_NAMES)):
            restarts.append(await _restart(session, index))
            await asyncio.sleep(args.steady)
        stop.set()
        sent = await broadcasts
        await _settled(session, args.timeout)
        replies = await session.swarm.collect(
            1.0, per_channel=sent.sent, last_positions=sent.last_positions
        )
        status = await session.swarm.status()
        returns = status["returns"]
        ends = [r.sigterm_ns for r in restarts[1:]] + [time.monotonic_ns()]
        for restart, end in zip(restarts, ends, strict=True):
            restart.returns = [r for r in returns if restart.sigterm_ns <= r[0] < end]

        total = sum(sent.sent.values())
        print(
            f"\n{total:,} broadcasts accepted in {sent.wall_s:.1f} s "
            f"({total / sent.wall_s:.1f}/s, at most {sent.max_late_s * 1e3:,.0f} ms behind "
            f"schedule); retried on the next node: {sent.refused} refused 503, "
            f"{sent.unreachable} unreachable, {sent.unanswered} without an answer"
        )
        for restart in restarts:
            lines, restart_faults = _describe(restart, args.history)
            print("\n".join(lines))
            faults += restart_faults
        failed = status["failed_attempts"]
        if failed:
            print(
                "attempts to come back that failed: "
                + ", ".join(f"{n} {why}" for why, n in failed.most_common())
            )
        frames = sum(r["frames"] for r in replies)
        expected = sum(r["target"] for r in replies)
        print(f"\nsubscribers got {frames:,} frames of {expected:,} expected")
        faults += _delivery_faults(replies, sent)
        connected = await _cluster_connected(session, args.subscribers)
        if connected != args.subscribers:
            faults.append(f"/info.json says {connected} connected, {args.subscribers} opened")
        errors = [e for r in replies for e in r["errors"]] + sent.errors
        for error in dict.fromkeys(errors[:8]):
            print(f"  error: {error}")
        print("\nresult: " + ("PASS" if not faults else "FAIL: " + "; ".join(faults)))
        return 1 if faults else 0
    finally:
        await session.close()


async def _settled(session: Session, timeout_s: float) -> None:
    """Wait until the subscribers' frame count has stopped growing for `QUIET_S`: the last
    frames are in, or (a loss) will never come."""
    deadline = time.monotonic() + timeout_s
    frames, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_frames = (await session.swarm.status())["frames"]
        if now_frames != frames:
            frames, quiet_since = now_frames, time.monotonic()
        elif time.monotonic() - quiet_since > QUIET_S:
            return
        await asyncio.sleep(POLL_S * 4)


async def _cluster_connected(session: Session, expected: int) -> int:
    """The cluster's `connected` from node A's /info.json, once its heartbeats agree."""
    http = KeepAliveClient.for_url(session.server.http_url)
    try:

        async def agrees() -> bool:
            return int((await _stats(http))["connected"]) == expected

        await wait_until(agrees, 5.0)
        return int((await _stats(http))["connected"])
    finally:
        await http.close()


async def _stats(http: KeepAliveClient) -> dict[str, Any]:
    status, body = await http.get_json("/info.json")
    if status != 200 or not isinstance(body, dict):
        raise RuntimeError(f"/info.json answered {status} {body!r}")
    return dict(body["stats"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rolling_restart", description=__doc__)
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--channels-per-client", type=int, default=2)
    parser.add_argument("--rate", type=float, default=50.0, help="broadcasts per second")
    parser.add_argument(
        "--history",
        type=int,
        default=100,
        help="BIFROST_HISTORY_SIZE (0: history off and unpositioned subscribers, to see the loss)",
    )
    parser.add_argument("--steady", type=float, default=5.0, help="seconds between the events")
    parser.add_argument(
        "--jitter",
        type=float,
        default=0.2,
        help="a closed subscriber's first attempt comes within this many seconds, at random",
    )
    parser.add_argument("--generators", type=int, default=4)
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds the last frames may take"
    )
    args = parser.parse_args(argv)
    return uvloop.run(_run(args))


if __name__ == "__main__":
    raise SystemExit(main())
