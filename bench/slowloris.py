"""Issue 12: connections that never become websockets, beside healthy subscribers and newcomers.

    python -m bench.slowloris [--healthy 50] [--attackers 1000] [--seconds 12] [--runs 3]
                              [--cap 200] [--auth-timeout 5]

One Bifröst process with BIFROST_AUTH_TIMEOUT at `--auth-timeout` (5 s, not the default 10 s,
so that a bound of that order cuts each attacker twice within a phase). `--healthy` checked
subscribers get paced broadcasts (`--rate`/s) and newcomers arrive at `--probe-rate`/s
(`bench.handshakes`: connect, upgrade, authenticate, `subscribed`), in three phases of
`--seconds` each:

- baseline: nothing else;
- silent: `--attackers` TCP connections that send nothing;
- slowloris: as many that send a request line, then one header line every `--drip` seconds,
  never ending the request.

Attackers (`bench.attackers.run_hold`) open over `--ramp` seconds before the phase, reopen
each connection one second after the server cuts it, and are let go at the end; everything is
on 127.0.0.1 and bounded in time and count. Then the same three phases on a second server with
BIFROST_MAX_CONNECTIONS=`--cap`, below what the attackers try to hold: there a newcomer should
get a clear 503, never a reset or a timeout. The sequence is repeated `--runs` times (in turn,
so drift hits every phase alike); figures are medians over runs, ratios are to the baseline of
the same server.

Exit status 1 when a healthy subscriber lost a frame, or a check fails: healthy p99 within
2x the baseline, every newcomer subscribed (capped: subscribed or 503), attackers cut within
2x BIFROST_AUTH_TIMEOUT (median hold), the capped server not holding more connections (by
its open descriptors) than its cap and the 64 it keeps past it to answer them 503.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import uvloop

from bench.attackers import HOLD_KINDS, Child, run_hold
from bench.generator import raise_open_file_limit
from bench.handshakes import OUTCOMES, PROBE_TIMEOUT_S, run_probes
from bench.runner import percentile
from bench.session import Phase, Session, fmt_mib

__all__ = ["main"]

SPAWN_S = 2.0
"""Time given to the attacker and probe processes to start before their schedule begins."""
RELEASE_AFTER_S = 1.5
"""Attackers hold on this long past the phase, so that the end reading still sees them."""
LATE_S = 0.5
SETTLE_TIMEOUT_S = 10.0
SETTLE_FDS = 10
CHILD_GRACE_S = 30.0
RATIO_LIMIT = 2.0
HOLD_LIMIT = 2.0
"""Attackers' median hold over this many times BIFROST_AUTH_TIMEOUT fails the run."""
REFUSAL_HEADROOM = 64
"""Connections Bifröst holds past BIFROST_MAX_CONNECTIONS to answer them 503 (bifrost/limits.py);
connections past these it closes unanswered."""
RESERVED_FDS = 300
"""Descriptors left to the server besides the attackers: healthy, newcomers, its own."""


@dataclass(frozen=True, slots=True)
class Reading:
    fds: int
    rss: int


@dataclass(frozen=True, slots=True)
class Holds:
    """What the attackers' connections did, as of the end of the phase."""

    opened: int
    held_at_end: int
    median_s: float
    median_cut: bool
    """False when the median connection was still held at the end: the median is a floor."""
    cut_by: Counter[str]
    failures: dict[str, int]


def summarise_holds(tally: dict[str, Any], end_at: float) -> Holds:
    """Hold times up to `end_at` (a connection still open then counts its age, censored)."""
    spans: list[tuple[float, bool]] = []
    held = 0
    cut_by: Counter[str] = Counter()
    for opened, closed, how in tally.get("connections", []):
        if opened >= end_at:
            continue
        cut = closed is not None and closed <= end_at
        held += not cut
        if cut:
            cut_by[how] += 1
        spans.append(((closed if cut else end_at) - opened, cut))
    spans.sort()
    median_s, median_cut = spans[len(spans) // 2] if spans else (0.0, False)
    return Holds(len(spans), held, median_s, median_cut, cut_by, tally.get("failures", {}))


@dataclass(slots=True)
class Outcome:
    """One phase of one run."""

    phase: str
    healthy: Phase
    probes: dict[str, Any]
    holds: Holds | None
    before: Reading
    end: Reading
    after: Reading
    cores: float
    errors: list[str]

    @property
    def success(self) -> float:
        attempts = self.probes.get("attempts", 0)
        return self.probes.get("outcomes", {}).get("subscribed", 0) / attempts if attempts else 0.0

    @property
    def probe_p99_ms(self) -> float:
        return percentile(self.probes.get("subscribed_ns", []), 0.99) / 1e6

    def line(self) -> str:
        outcomes = ", ".join(f"{k} {v}" for k, v in self.probes.get("outcomes", {}).items())
        text = (
            f"  healthy: {self.healthy.line()}\n"
            f"  newcomers: {outcomes}; connect p99 {self.probe_p99_ms:.1f} ms\n"
            f"  server: {self.cores:.2f} cores; fds {self.before.fds} -> {self.end.fds} -> "
            f"{self.after.fds}, RSS {fmt_mib(self.before.rss)} -> {fmt_mib(self.end.rss)} -> "
            f"{fmt_mib(self.after.rss)} (before, end, after release)"
        )
        if self.holds is not None:
            h = self.holds
            cut = ", ".join(f"{how} {n}" for how, n in sorted(h.cut_by.items())) or "none"
            text += (
                f"\n  attackers: {h.opened} connections, {h.held_at_end} held at the end, "
                f"median hold {'' if h.median_cut else '>= '}{h.median_s:.1f} s; cut: {cut}; "
                f"connect failures: {h.failures}"
            )
        return text + "".join(f"\n  ERROR: {e}" for e in self.errors[:3])


def _reading(session: Session) -> Reading:
    return Reading(session.open_fds(), session.rss())


async def _reading_at(
    session: Session, at: float, cpu0: float, since: float
) -> tuple[Reading, float]:
    """The server at `at`, and its CPU in cores from `since` (when it had used `cpu0` s)."""
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    cores = (session.server.sample().cpu_s - cpu0) / (time.monotonic() - since)
    return _reading(session), cores


async def _settled(session: Session, fds: int) -> Reading:
    """The server once the attackers' descriptors are gone (or after SETTLE_TIMEOUT_S)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while session.open_fds() > fds + SETTLE_FDS and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    return _reading(session)


async def _phase(session: Session, args: argparse.Namespace, kind: str | None) -> Outcome:
    host, port = session.host_port
    before = _reading(session)
    cpu0 = session.server.sample().cpu_s
    now = time.monotonic()
    open_at = now + SPAWN_S
    start_at = open_at + (args.ramp if kind else 0.0)
    end_at = start_at + args.seconds
    attack = None
    if kind:
        attack = Child(
            run_hold,
            host,
            port,
            kind,
            args.attackers,
            open_at,
            args.ramp,
            end_at,
            end_at + RELEASE_AFTER_S,
            args.drip,
        )
    probes = Child(run_probes, host, port, session.secret, args.probe_rate, start_at, end_at)
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    # The end reading is due at end_at, with the attackers still held, even when the phase's
    # collection waits on for frames that broadcasts refused by the server never sent.
    end_reading = asyncio.create_task(_reading_at(session, end_at, cpu0, now))
    healthy = await session.phase(round(args.seconds * args.rate), rate=args.rate)
    end, cores = await end_reading
    probe_tally = await probes.result(PROBE_TIMEOUT_S + CHILD_GRACE_S)
    errors = list(healthy.errors)
    holds = None
    if attack is not None:
        tally = await attack.result(RELEASE_AFTER_S + CHILD_GRACE_S)
        if "error" in tally:
            errors.append(f"attacker process: {tally['error']}")
        holds = summarise_holds(tally, end_at)
        _note_late("attacker", tally, open_at)
    if "error" in probe_tally:
        errors.append(f"newcomer process: {probe_tally['error']}")
    _note_late("newcomer", probe_tally, start_at)
    after = await _settled(session, before.fds)
    label = kind or "baseline"
    return Outcome(label, healthy, probe_tally, holds, before, end, after, cores, errors)


def _note_late(what: str, tally: dict[str, Any], due_at: float) -> None:
    """Say so when a process began after its schedule (a loaded machine): its first
    connections then went out in a burst, and the phase measured that burst too."""
    late = tally.get("started_at", due_at) - due_at
    if late > LATE_S:
        print(f"NOTE: the {what} process started {late:.1f} s behind its schedule")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _table(title: str, outcomes: list[Outcome]) -> list[str]:
    """Medians over runs, one row per phase; ratios to this server's baseline."""
    runs_done = max(Counter(o.phase for o in outcomes).values(), default=0)
    title += f" (median of {runs_done} run{'s' if runs_done != 1 else ''})"
    by_phase: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_phase.setdefault(outcome.phase, []).append(outcome)
    base_p99 = _median([o.healthy.p(0.99) for o in by_phase.get("baseline", [])])
    lines = [
        f"\n{title}",
        f"  {'phase':<10} {'healthy p99':>11} {'x base':>6} {'newcomers ok':>12} "
        f"{'conn. p99':>9} {'held at end':>11} {'median hold':>11}   server fds / RSS MiB "
        "(before -> end -> after)",
    ]
    for phase in ("baseline", *HOLD_KINDS):
        runs = by_phase.get(phase, [])
        if not runs:
            continue
        p99 = _median([o.healthy.p(0.99) for o in runs])
        ratio = p99 / base_p99 if base_p99 else float("nan")
        holds = [o.holds for o in runs if o.holds is not None]
        held = f"{_median([h.held_at_end for h in holds]):,.0f}" if holds else "-"
        if holds:
            floor = any(not h.median_cut for h in holds)
            hold = f"{'>=' if floor else ''}{_median([h.median_s for h in holds]):.1f} s"
        else:
            hold = "-"
        fds = "/".join(
            f"{_median([getattr(o, r).fds for o in runs]):.0f}" for r in ("before", "end", "after")
        )
        rss = "/".join(
            f"{_median([getattr(o, r).rss for o in runs]) / 2**20:.1f}"
            for r in ("before", "end", "after")
        )
        lines.append(
            f"  {phase:<10} {p99:8.2f} ms {ratio:6.2f} "
            f"{100 * _median([o.success for o in runs]):11.1f}% "
            f"{_median([o.probe_p99_ms for o in runs]):6.1f} ms {held:>11} {hold:>11}   "
            f"{fds}  {rss}"
        )
    lines.append("  newcomers' outcomes, summed over runs:")
    for phase in ("baseline", *HOLD_KINDS):
        total: Counter[str] = Counter(dict.fromkeys(OUTCOMES, 0))
        for o in by_phase.get(phase, []):
            total.update(o.probes.get("outcomes", {}))
        if phase in by_phase:
            lines.append(f"    {phase:<10} " + ", ".join(f"{k} {v}" for k, v in total.items()))
    return lines


def _checks(outcomes: list[Outcome], args: argparse.Namespace, cap: int | None) -> list[str]:
    failures = [e for o in outcomes for e in o.errors]
    where = f"capped at {cap}" if cap else "uncapped"
    base = _median([o.healthy.p(0.99) for o in outcomes if o.phase == "baseline"])
    for phase in HOLD_KINDS:
        runs = [o for o in outcomes if o.phase == phase]
        if not runs:
            continue
        p99 = _median([o.healthy.p(0.99) for o in runs])
        if p99 > RATIO_LIMIT * base:
            failures.append(f"{where}, {phase}: healthy p99 {p99:.1f} ms over 2x {base:.1f} ms")
        holds = [o.holds for o in runs if o.holds is not None]
        hold = _median([h.median_s for h in holds])
        if hold > HOLD_LIMIT * args.auth_timeout:
            failures.append(
                f"{where}, {phase}: attackers held {hold:.1f} s (median), over "
                f"{HOLD_LIMIT:g}x BIFROST_AUTH_TIMEOUT"
            )
        elif not all(h.median_cut for h in holds):
            print(
                f"NOTE: {where}, {phase}: most attackers outlived the phase ({hold:.1f} s), "
                f"too short to tell whether {HOLD_LIMIT:g}x BIFROST_AUTH_TIMEOUT holds"
            )
        if cap is not None:
            # Every connection opened since the phase began (attackers, newcomers, the
            # broadcaster's) holds a descriptor of the server and counts against its cap.
            held = max(o.end.fds - o.before.fds for o in runs)
            if held + args.healthy > cap + REFUSAL_HEADROOM:
                failures.append(
                    f"{where}, {phase}: the server held {held} more connections beside "
                    f"{args.healthy} subscribers, past the cap and its {REFUSAL_HEADROOM} "
                    "kept to answer 503"
                )
    for o in outcomes:
        counts = o.probes.get("outcomes", {})
        unclear = {k: v for k, v in counts.items() if v and k not in ("subscribed", "answered 503")}
        if cap is None and counts.get("answered 503"):
            unclear["answered 503"] = counts["answered 503"]
        if unclear:
            failures.append(f"{where}, {o.phase}: newcomers {unclear}")
    return failures


async def _server_run(args: argparse.Namespace, cap: int | None) -> list[Outcome]:
    env = {"BIFROST_AUTH_TIMEOUT": f"{args.auth_timeout:g}"}
    if cap is not None:
        env["BIFROST_MAX_CONNECTIONS"] = str(cap)
    session = await Session.start("slowloris-cap" if cap else "slowloris", env=env, generators=2)
    outcomes: list[Outcome] = []
    try:
        await session.connect(args.healthy)
        await session.phase(10)
        print(
            f"\nBifröst pid {session.pid}, BIFROST_AUTH_TIMEOUT={args.auth_timeout:g}"
            + (f", BIFROST_MAX_CONNECTIONS={cap}" if cap else "")
            + f": {args.healthy} healthy subscribers, {args.rate:g} broadcasts/s, "
            f"{args.probe_rate:g} newcomers/s, {args.seconds:g} s per phase"
        )
        print(f"start: {await session.readings()}", flush=True)
        kinds: list[str | None] = [None, *HOLD_KINDS]
        for run in range(args.runs):
            turn = run % len(kinds)
            for kind in kinds[turn:] + kinds[:turn]:
                label = f"{kind} x {args.attackers}" if kind else "baseline"
                print(f"\nrun {run + 1}/{args.runs}, {label}:", flush=True)
                outcome = await _phase(session, args, kind)
                outcomes.append(outcome)
                print(outcome.line(), flush=True)
        print(f"\nend: {await session.readings()}")
    finally:
        await session.close()
    return outcomes


def _fit_attackers(args: argparse.Namespace) -> None:
    """Lift the soft open-file limit (children inherit it) and fit the attackers under it."""
    hard = raise_open_file_limit()
    room = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - args.healthy - RESERVED_FDS
    if args.attackers > room:
        print(f"NOTE: open-file limit {hard}: {args.attackers} attackers lowered to {room}")
        args.attackers = max(1, room)


async def _run(args: argparse.Namespace) -> int:
    _fit_attackers(args)
    uncapped = await _server_run(args, None)
    capped = await _server_run(args, args.cap) if args.cap else []
    lines = _table("no connection cap (BIFROST_MAX_CONNECTIONS at the file limit)", uncapped)
    if capped:
        lines += _table(f"BIFROST_MAX_CONNECTIONS={args.cap}", capped)
    print("\n".join(lines))
    failures = _checks(uncapped, args, None) + _checks(capped, args, args.cap)
    print("\nresult: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures[:8])))
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slowloris", description=__doc__)
    parser.add_argument("--healthy", type=int, default=50)
    parser.add_argument("--attackers", type=int, default=1000, help="connections held per phase")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each phase")
    parser.add_argument("--runs", type=int, default=3, help="repeats of the three phases")
    parser.add_argument("--rate", type=float, default=25.0, help="broadcasts per second")
    parser.add_argument("--probe-rate", type=float, default=20.0, help="newcomers per second")
    parser.add_argument("--auth-timeout", type=float, default=5.0, help="BIFROST_AUTH_TIMEOUT")
    parser.add_argument("--cap", type=int, default=200, help="BIFROST_MAX_CONNECTIONS; 0: skip")
    parser.add_argument("--ramp", type=float, default=3.0, help="seconds to open the attackers")
    parser.add_argument("--drip", type=float, default=2.0, help="slowloris: s between headers")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 120 or not 1 <= args.runs <= 10 or args.attackers < 1:
        parser.error("--seconds in (0, 120], --runs in [1, 10], --attackers >= 1")
    if args.cap and args.cap <= args.healthy:
        parser.error("--cap must leave room beside the healthy subscribers")
    return uvloop.run(_run(args))


if __name__ == "__main__":
    raise SystemExit(main())
