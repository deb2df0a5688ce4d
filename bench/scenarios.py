"""The workloads, in full and `--quick` sizes, as plain data.

A scenario names the two topologies it compares (`subject`, `baseline`, keys of
`bench.servers.TOPOLOGIES`): (a)-(d) Bifröst against the Node reference, (e) two Bifröst nodes
through Redis against one Bifröst process, in the same run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["CAPACITY_HEADROOM", "PACED_RATE", "Scenario", "build_scenarios"]

CAPACITY_HEADROOM = 100
"""Descriptors the capacity run leaves to the server process itself (listener, epoll, logs…)."""

PACED_RATE = 20.0
"""Broadcasts per second of the paced latency phase: 40,000 frames/s at 2,000 subscribers, about
a third of what either server delivers flat out here, so neither is saturated."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """One workload: clients added in `steps` (cumulative counts), then `broadcasts` sent.

    `throughput` marks the scenarios whose broadcast phase is the measurement (frames/s,
    latency, CPU per frame); in the others the broadcasts are one per channel, a check that
    every socket is still held and served. `paced_broadcasts` more, sent at `paced_rate` per
    second after the closed-loop phase, measure latency below saturation: on two shared cores,
    latency at full speed is mostly the generators' backlog, which grows with the server's speed.
    """

    key: str
    title: str
    steps: tuple[int, ...]
    channels: int
    broadcasts: int
    throughput: bool = False
    capacity: bool = False
    channels_per_client: int = 1
    paced_broadcasts: int = 0
    paced_rate: float = 0.0
    http_connections: int = 4
    # POSTs in flight per channel (each its own sequence, which the clients check).
    lanes: int = 1
    subject: str = "bifrost"
    baseline: str = "reference"

    @property
    def sockets(self) -> int:
        return self.steps[-1]


def _climb(target: int, steps: int) -> tuple[int, ...]:
    return tuple(round(target * (i + 1) / steps) for i in range(steps))


def build_scenarios(*, quick: bool, open_file_limit: int) -> dict[str, Scenario]:
    """Every scenario by key, sized for a full run or for a smoke test."""
    capacity_target = max(1000, open_file_limit - CAPACITY_HEADROOM)
    if quick:
        fanout, spread_subs, spread_broadcasts, idle, climb = 300, 300, 200, 1000, _climb(2000, 3)
        fanout_broadcasts, channels, paced, burst_broadcasts = 20, 10, 20, 80
    else:
        fanout, spread_subs, spread_broadcasts, idle = 2000, 2000, 2000, 10_000
        climb = _climb(capacity_target, 5)
        fanout_broadcasts, channels, paced, burst_broadcasts = 200, 100, 100, 800
    fanout_subs = fanout
    fanout_title = (
        f"fan-out: {fanout} subscribers x {fanout_broadcasts} broadcasts, one channel "
        f"(+ {paced} paced at {PACED_RATE:g}/s for latency)"
    )
    spread_title = (
        f"spread: {channels} channels x {spread_broadcasts} broadcasts, {spread_subs} subscribers"
    )
    fanout = Scenario(
        "a",
        fanout_title,
        (fanout,),
        1,
        fanout_broadcasts,
        throughput=True,
        paced_broadcasts=paced,
        paced_rate=PACED_RATE,
    )
    scenarios = [
        fanout,
        Scenario("b", spread_title, (spread_subs,), channels, spread_broadcasts, throughput=True),
        Scenario(
            "c",
            f"idle: {idle} authenticated subscribers (memory)",
            (idle,),
            channels,
            broadcasts=channels,
        ),
        Scenario(
            "d",
            f"capacity: climb to {climb[-1]} sockets on one server process",
            climb,
            channels,
            broadcasts=channels,
            capacity=True,
        ),
        replace(
            fanout,
            key="e",
            title=f"two nodes through Redis: the {fanout_title}; subscribers and POSTs spread "
            "over both nodes",
            subject="bifrost-redis",
            baseline="bifrost",
        ),
        replace(
            fanout,
            key="f",
            title=f"bursts: {fanout_subs} subscribers, one channel, {burst_broadcasts} broadcasts "
            "from 8 HTTP connections at once, each as fast as answered",
            broadcasts=burst_broadcasts,
            paced_broadcasts=0,
            http_connections=8,
            lanes=8,
        ),
    ]
    return {s.key: s for s in scenarios}
