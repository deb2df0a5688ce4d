"""Issue 5: does Bifröst hold steady under hours of churn? A bounded soak.

    python -m bench.soak --minutes N [--stable 200] [--churners 200] [--rate 20]

One Bifröst. `--stable` checked subscribers stay connected the whole time, spread over
`--channels` channels; `--churners` more sockets at any moment (`bench.attackers.churn`)
connect, authenticate to 1-3 of the same channels, stay up to `--max-stay` seconds and leave
abruptly (TCP reset, no close frame), over and over. Broadcasts go out all along at `--rate`
per second, in rounds of `--round` seconds; after each round every stable subscriber's frames
are checked (none lost, none out of order) and one line of readings is printed.

Readings: server RSS, open descriptors (/proc/<pid>/fd), and /info.json's connected and
channels, at the start (stable subscribers only), after each round, and at the end (churn
stopped and its sockets gone). Exit status 1 when a stable subscriber lost a frame, or when
the end's connected/channels/descriptors do not match the start's.
"""

from __future__ import annotations

import argparse
import time

import uvloop

from bench.attackers import Child, run_churn
from bench.session import Session, fmt_mib, wait_until

__all__ = ["main"]

DRAIN_TIMEOUT_S = 30.0
CHURN_GRACE_S = 60.0


async def _run(args: argparse.Namespace) -> int:
    session = await Session.start("soak", channels=args.channels, generators=2)
    host, port = session.host_port
    failures: list[str] = []
    try:
        await session.connect(args.stable)
        await session.phase(args.channels)
        start = await session.stats()
        rss0, fds0 = session.rss(), session.open_fds()
        seconds = args.minutes * 60
        print(
            f"Bifröst pid {session.pid}: soak of {args.minutes:g} min, {args.stable} stable "
            f"subscribers on {args.channels} channels, {args.churners} churning sockets "
            f"(stay 0-{args.max_stay:g} s, leave with a reset), {args.rate:g} broadcasts/s"
        )
        print(f"start: {await session.readings()}", flush=True)
        churn = Child(
            run_churn,
            host,
            port,
            session.secret,
            seconds,
            args.churners,
            args.channels,
            args.max_stay,
        )
        began = time.monotonic()
        rounds = 0
        cpu0 = session.server.sample().cpu_s
        while (left := seconds - (time.monotonic() - began)) > 1.0:
            length = min(args.round, left)
            phase = await session.phase(
                max(1, round(length * args.rate)), rate=args.rate, exact_deliveries=False
            )
            rounds += 1
            failures.extend(phase.errors)
            elapsed = time.monotonic() - began
            print(
                f"{elapsed / 60:5.1f} min: {await session.readings()}; stable p99 "
                f"{phase.p(0.99):.1f} ms, {phase.frames}/{phase.expected} frames"
                + (f", ERRORS: {phase.errors[:2]}" if phase.errors else ""),
                flush=True,
            )
        tally = await churn.result(CHURN_GRACE_S)
        cpu = session.server.sample().cpu_s - cpu0
        print(f"churn: {tally}")
        drained = await wait_until(
            lambda: _connected_is(session, args.stable), DRAIN_TIMEOUT_S, step_s=0.5
        )
        await session.phase(args.channels)  # the stable subscribers still hear everything
        end = await session.stats()
        rss1, fds1 = session.rss(), session.open_fds()
        print(f"end:   {await session.readings()}")
        wall = time.monotonic() - began
        print(
            f"\nstart -> end: RSS {fmt_mib(rss0)} -> {fmt_mib(rss1)} "
            f"({(rss1 - rss0) / 2**20:+.1f} MiB), open fds {fds0} -> {fds1}, "
            f"connected {start['connected']} -> {end['connected']}, "
            f"channels {start['channels']} -> {end['channels']}; "
            f"server CPU {cpu / wall:.2f} cores on average over {rounds} rounds"
        )
        if isinstance(tally, dict) and "connected" in tally:
            print(
                f"churned sockets: {tally['connected']:,} connected "
                f"({tally['connected'] / wall:.0f}/s), {tally['failed']} failed to connect"
            )
        if not drained:
            failures.append(f"connected did not return to {args.stable}")
        if fds1 != fds0:
            failures.append(f"open descriptors {fds0} at start, {fds1} at end")
        if end.get("channels") != start.get("channels"):
            failures.append(f"channels {start.get('channels')} at start, {end.get('channels')}")
        if isinstance(tally, dict) and "error" in tally:
            failures.append(f"churn process: {tally['error']}")
        print("\nresult: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures[:5])))
        return 1 if failures else 0
    finally:
        await session.close()


async def _connected_is(session: Session, count: int) -> bool:
    return int((await session.stats()).get("connected", -1)) == count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--stable", type=int, default=200)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--churners", type=int, default=200, help="churning sockets at a time")
    parser.add_argument("--max-stay", type=float, default=2.0, help="longest churner life, s")
    parser.add_argument("--rate", type=float, default=20.0, help="broadcasts per second")
    parser.add_argument("--round", type=float, default=60.0, help="seconds between readings")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 24 * 60:
        parser.error("--minutes must be in (0, 1440]")
    return uvloop.run(_run(args))


if __name__ == "__main__":
    raise SystemExit(main())
