"""Sockets displaced by a stopping node and recovered on another: what the scripts that stop
nodes under positioned subscribers (`rolling_restart`, `reconnect_storm`) share.

The servers (two nodes and their Redis, history on, positioned subscribers), waiting until
every displaced socket is subscribed again, what their returns looked like, and the final
check that every subscriber got every message of its channels exactly once and in order, by
sequence number and by position.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.broadcaster import SteadyOutcome
from bench.keepalive import KeepAliveClient
from bench.runner import info_stats, percentile
from bench.servers import ServerSpec, bifrost_redis_pair
from bench.session import Session, wait_until

__all__ = [
    "SERVICE_RESTART",
    "Delivery",
    "close_lines",
    "ms",
    "positioned_pair",
    "return_lines",
    "verify_delivery",
    "wait_back",
]

SERVICE_RESTART = 1012
POLL_S = 0.25
"""How often the generators are asked how many are back. Each answer walks every client: at
20 a second that was a tenth of a generator's CPU during a storm, taken from the servers it
shares the cores with. The figures come from the clients' own clocks, not from the polls."""
QUIET_S = 2.0


def positioned_pair(next_port: Callable[[], int], secret: str) -> ServerSpec:
    """Two nodes and their Redis, measured with positioned subscribers."""
    return dataclasses.replace(bifrost_redis_pair(next_port, secret), positioned=True)


def ms(ns: float) -> str:
    return f"{ns / 1e6:,.0f} ms"


async def wait_back(
    session: Session, since_ns: int, displaced: int, timeout_s: float
) -> tuple[int, dict[str, Any]]:
    """Wait until the `displaced` sockets closed since `since_ns` are all subscribed again
    and every client is ready: the last one's `subscribed` time (0 if not within
    `timeout_s`), and the swarm's status then (without the returns, which polling would
    make the clients pay for)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = await session.swarm.status(since_ns, returns=False)
        if (
            status["displaced"] >= displaced
            and status["back"] == status["displaced"]
            and status["ready"] == status["clients"]
        ):
            return status["back_ns"], status
        if time.monotonic() > deadline:
            return 0, status
        await asyncio.sleep(POLL_S)


def close_lines(
    name: str, returns: Sequence[tuple[int, ...]], displaced: int
) -> tuple[list[str], list[str]]:
    """How node `name`'s sockets were closed (each must be 1012, and each one it held), and the
    faults."""
    codes = Counter(r[1] for r in returns)
    lines = [
        f"  {len(returns)} sockets closed ("
        + ", ".join(f"{n} with {code or 'no close frame'}" for code, n in sorted(codes.items()))
        + ")"
    ]
    faults: list[str] = []
    if not returns:
        faults.append(f"node {name}: no socket came back")
        return lines, faults
    if set(codes) != {SERVICE_RESTART}:
        faults.append(f"node {name}: sockets closed otherwise than 1012: {dict(codes)}")
    if len(returns) != displaced:
        faults.append(f"node {name}: {len(returns)} closed of {displaced} on it")
    return lines, faults


def return_lines(returns: Sequence[tuple[int, ...]], history: int) -> list[str]:
    """Each socket's time away and attempts, and what the returns recovered and how fast."""
    if not returns:
        return []
    away = sorted(r[2] - r[0] for r in returns if r[2])
    attempts = [r[3] for r in returns]
    lines = [
        f"  time away per socket (close to subscribed): p50 {ms(percentile(away, 0.5))}, "
        f"p99 {ms(percentile(away, 0.99))}, max {ms(away[-1] if away else 0)}; "
        f"attempts: {sum(attempts)} for {len(attempts)} sockets, at most {max(attempts)}"
    ]
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
            f"back to the last recovered frame, {ms(window)}: {rate:,.0f} messages/s",
            f"  replay per socket (subscribed to last recovered frame): p50 "
            f"{ms(percentile(replay, 0.5))}, p99 {ms(percentile(replay, 0.99))}; close to "
            f"caught up: p50 {ms(percentile(caught_up, 0.5))}, "
            f"p99 {ms(percentile(caught_up, 0.99))}",
        ]
    elif history:
        lines.append("  recovered no message (none was sent while they were away)")
    return lines


@dataclass(slots=True)
class Delivery:
    """The end of a run: what the subscribers got against what the nodes accepted."""

    lines: list[str]
    faults: list[str]
    status: dict[str, Any]
    """The swarm's status once every frame was in, with every return."""


async def verify_delivery(
    session: Session, sent: SteadyOutcome, subscribers: int, stats_url: str, timeout_s: float
) -> Delivery:
    """Once the broadcasts have stopped and the frames stopped coming: every subscriber must
    have every message of its channels exactly once and in order, every position one past the
    last of its channel, every channel `since` named recovered, its `since` at the end each
    channel's last broadcast's; and `stats_url`'s /info.json must count `subscribers`."""
    await _settled(session, timeout_s)
    replies = await session.swarm.collect(
        1.0, per_channel=sent.sent, last_positions=sent.last_positions
    )
    status = await session.swarm.status()
    total = sum(sent.sent.values())
    lines = [
        f"{total:,} broadcasts accepted in {sent.wall_s:.1f} s "
        f"({total / sent.wall_s:.1f}/s, at most {sent.max_late_s * 1e3:,.0f} ms behind "
        f"schedule); retried on the next node: {sent.refused} refused 503, "
        f"{sent.unreachable} unreachable, {sent.unanswered} without an answer"
    ]
    failed = status["failed_attempts"]
    if failed:
        lines.append(
            "attempts to come back that failed: "
            + ", ".join(f"{n} {why}" for why, n in failed.most_common())
        )
    frames = sum(r["frames"] for r in replies)
    expected = sum(r["target"] for r in replies)
    lines.append(f"subscribers got {frames:,} frames of {expected:,} expected")
    faults = _delivery_faults(replies, sent)
    connected = await _cluster_connected(stats_url, subscribers)
    if connected != subscribers:
        faults.append(f"/info.json says {connected} connected, {subscribers} opened")
    errors = [e for r in replies for e in r["errors"]] + sent.errors
    lines += [f"  error: {error}" for error in dict.fromkeys(errors[:8])]
    return Delivery(lines, faults, status)


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


async def _settled(session: Session, timeout_s: float) -> None:
    """Wait until the subscribers' frame count has stopped growing for `QUIET_S`: the last
    frames are in, or (a loss) will never come."""
    deadline = time.monotonic() + timeout_s
    frames, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_frames = (await session.swarm.status(returns=False))["frames"]
        if now_frames != frames:
            frames, quiet_since = now_frames, time.monotonic()
        elif time.monotonic() - quiet_since > QUIET_S:
            return
        await asyncio.sleep(POLL_S)


async def _cluster_connected(url: str, expected: int) -> int:
    """The cluster's `connected` from the node at `url`, once its heartbeats agree."""
    http = KeepAliveClient.for_url(url)
    try:

        async def agrees() -> bool:
            return int((await info_stats(http))["connected"]) == expected

        await wait_until(agrees, 5.0)
        return int((await info_stats(http))["connected"])
    finally:
        await http.close()
