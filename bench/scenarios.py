"""The workloads, in full and `--quick` sizes, as plain data.

A scenario names the topologies it compares (`subject`, `baseline` and any `others`, keys of
`bench.servers.TOPOLOGIES`): (a)-(d) Bifröst against the Node reference, (e) two Bifröst nodes
through Redis against one Bifröst process, (f) and (g) Bifröst with history on and positioned
subscribers against history off and the reference, (h) bursts (broadcasts from several
connections at once) and (i) a burst to every socket one process can hold against the
reference, each in the same run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench.broadcaster import REQUEST_TIMEOUT_S

__all__ = ["CAPACITY_HEADROOM", "PACED_RATE", "Scenario", "build_scenarios"]

CAPACITY_HEADROOM = 150
"""Descriptors the capacity runs (d) and (i) leave below the open-file limit: the 128 Bifröst
keeps past its connection cap (`bench.servers.bifrost_max_connections`), then the bench's own
HTTP connections (up to 8 POSTing and one reading /info.json), which count against that cap
too, and a few to spare."""

PACED_RATE = 20.0
"""Broadcasts per second of the paced latency phase: 40,000 frames/s at 2,000 subscribers, about
a third of what either server delivers flat out here, so neither is saturated."""

BURST_LANES = 8
"""POSTs in flight at once on the burst scenario's one channel, each on its own connection, so
that the server reads several of them in one loop turn: the case coalesced writes are for."""

SCALE_CHANNELS = 8
"""Channels every socket of the burst to capacity hears (all the same 8): each broadcast goes to
every socket, and one POST per channel is in flight, `BURST_LANES` at once."""
SCALE_BROADCASTS = 20
SCALE_POST_TIMEOUT_S = 60.0
"""A POST to 20,000 sockets, answered once every frame is written, takes seconds while seven
others are written in the same turns."""


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
    # POSTs in flight per channel, each lane its own sequence, which the clients check.
    lanes: int = 1
    post_timeout_s: float = REQUEST_TIMEOUT_S
    # The burst itself is the figure: its time, the server's CPU over it, RSS before it and
    # at its peak, the slowest POST's answer.
    scale: bool = False
    subject: str = "bifrost"
    baseline: str = "reference"
    others: tuple[str, ...] = ()

    @property
    def sockets(self) -> int:
        return self.steps[-1]

    @property
    def servers(self) -> tuple[str, ...]:
        """Every topology the scenario runs, in the order of the table's columns."""
        return (self.subject, self.baseline, *self.others)


def _climb(target: int, steps: int) -> tuple[int, ...]:
    return tuple(round(target * (i + 1) / steps) for i in range(steps))


def build_scenarios(*, quick: bool, open_file_limit: int) -> dict[str, Scenario]:
    """Every scenario by key, sized for a full run or for a smoke test."""
    capacity_target = max(1000, open_file_limit - CAPACITY_HEADROOM)
    if quick:
        fanout_subs, spread_subs, spread_broadcasts, idle = 300, 300, 200, 1000
        climb, scale_sockets = _climb(2000, 3), 2000
        fanout_broadcasts, channels, paced, burst_broadcasts = 20, 10, 20, 80
    else:
        fanout_subs, spread_subs, spread_broadcasts, idle = 2000, 2000, 2000, 10_000
        climb, scale_sockets = _climb(capacity_target, 5), capacity_target
        fanout_broadcasts, channels, paced, burst_broadcasts = 200, 100, 100, 800
    fanout_title = (
        f"fan-out: {fanout_subs} subscribers x {fanout_broadcasts} broadcasts, one channel "
        f"(+ {paced} paced at {PACED_RATE:g}/s for latency)"
    )
    spread_title = (
        f"spread: {channels} channels x {spread_broadcasts} broadcasts, {spread_subs} subscribers"
    )
    history = "history on (BIFROST_HISTORY_SIZE=100, positioned subscribers) against off"
    fanout = Scenario(
        "a",
        fanout_title,
        (fanout_subs,),
        1,
        fanout_broadcasts,
        throughput=True,
        paced_broadcasts=paced,
        paced_rate=PACED_RATE,
    )
    spread = Scenario(
        "b", spread_title, (spread_subs,), channels, spread_broadcasts, throughput=True
    )
    scenarios = [
        fanout,
        spread,
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
            title=f"{history} and the reference: the {fanout_title}",
            subject="bifrost-history",
            baseline="bifrost",
            others=("reference",),
        ),
        replace(
            spread,
            key="g",
            title=f"{history} and the reference: the {spread_title}",
            subject="bifrost-history",
            baseline="bifrost",
            others=("reference",),
        ),
        replace(
            fanout,
            key="h",
            title=f"bursts: {fanout_subs} subscribers, one channel, {burst_broadcasts} broadcasts "
            f"from {BURST_LANES} HTTP connections at once, each as fast as answered",
            broadcasts=burst_broadcasts,
            paced_broadcasts=0,
            http_connections=BURST_LANES,
            lanes=BURST_LANES,
        ),
        Scenario(
            "i",
            f"burst to capacity: {scale_sockets} sockets on one server process, each on the same "
            f"{SCALE_CHANNELS} channels, {SCALE_BROADCASTS} broadcasts from {BURST_LANES} HTTP "
            "connections at once",
            (scale_sockets,),
            SCALE_CHANNELS,
            SCALE_BROADCASTS,
            throughput=True,
            channels_per_client=SCALE_CHANNELS,
            http_connections=BURST_LANES,
            post_timeout_s=SCALE_POST_TIMEOUT_S,
            scale=True,
        ),
    ]
    return {s.key: s for s in scenarios}
