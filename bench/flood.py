"""Issue 5: healthy subscribers' latency while the server is being flooded.

    python -m bench.flood [--healthy 200] [--seconds 12] [--rate 25] [--idle 1000]

One Bifröst (default settings), `--healthy` checked subscribers on one channel, and three
phases of the same paced broadcasts, each `--seconds` long:

0. no flood: the baseline;
1. one client writing ping frames as fast as the kernel takes them (`bench.attackers.flood`);
   each time the server closes it for its rate, it opens the next socket and goes on;
2. `--idle` sockets that complete the handshake and never authenticate: they are opened at
   the start of the phase and the server closes them when BIFROST_AUTH_TIMEOUT (10 s) passes,
   so the phase covers both the burst of handshakes and the mass close.

Prints p50/p99/max latency of each phase beside the baseline, what the attackers saw (close
codes, sockets opened) and the server's CPU and RSS. Exit status 1 when a healthy subscriber
lost a frame or was disconnected, or when an attack more than doubled the healthy p99.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from bench.attackers import Child, run_flood, run_idle
from bench.session import Phase, Session, fmt_mib

__all__ = ["main"]

ATTACKER_GRACE_S = 30.0
RATIO_LIMIT = 2.0
"""Healthy p99 under attack over this many times the p99 without fails the run (as for the
stalled subscriber of bench.slow_consumer)."""


async def _measured(
    session: Session, args: argparse.Namespace, label: str, attack: Callable[[], Awaitable[Any]]
) -> tuple[Phase, Any]:
    """Run the attack (started first) and a paced phase side by side; both results."""
    cpu0 = session.server.sample()
    started = await attack()
    phase = await session.phase(
        round(args.seconds * args.rate), rate=args.rate, exact_deliveries=False
    )
    cpu1 = session.server.sample()
    tally = await started.result(args.seconds + ATTACKER_GRACE_S) if started else None
    cores = (cpu1.cpu_s - cpu0.cpu_s) / phase.seconds if phase.seconds else 0.0
    print(f"\n{label}: {phase.line()}")
    print(f"   server: {cores:.2f} cores busy, RSS {fmt_mib(cpu1.rss_bytes)}")
    if tally is not None:
        print(f"   attacker: {tally}")
    return phase, tally


async def _run(args: argparse.Namespace) -> int:
    env = {"BIFROST_MAX_FRAMES_PER_SECOND": str(args.max_fps)} if args.max_fps else {}
    session = await Session.start("flood", generators=2, env=env)
    host, port = session.host_port
    try:
        await session.connect(args.healthy)
        await session.phase(10)
        print(
            f"Bifröst pid {session.pid}: {args.healthy} healthy subscribers, paced broadcasts "
            f"at {args.rate:g}/s for {args.seconds:g} s per phase"
        )
        print(f"start: {await session.readings()}")

        async def nothing() -> None:
            return None

        async def flood() -> Child:
            child = Child(run_flood, host, port, session.secret, args.seconds + 0.5)
            await asyncio.sleep(0.5)  # already flooding when the phase starts
            return child

        async def idle() -> Child:
            return Child(run_idle, host, port, args.idle, args.seconds + 2.0)

        base, _ = await _measured(session, args, "no flood", nothing)
        flooded, _ = await _measured(session, args, "one client flooding frames", flood)
        idled, tally = await _measured(
            session, args, f"{args.idle} sockets that never authenticate", idle
        )
        print(f"\nend: {await session.readings()}")
        print("\nhealthy latency, ms          p50      p99      max   p99 / no flood")
        for label, phase in (
            ("no flood", base),
            ("one client flooding", flooded),
            (f"{args.idle} unauthenticated", idled),
        ):
            ratio = phase.p(0.99) / base.p(0.99) if base.p(0.99) else float("nan")
            print(
                f"  {label:<26}{phase.p(0.5):7.2f}  {phase.p(0.99):7.2f}  "
                f"{phase.max_ms:7.2f}   {ratio:5.2f}"
            )
        errors = [e for p in (base, flooded, idled) for e in p.errors]
        if isinstance(tally, dict) and tally.get("opened", 0) < args.idle:
            print(f"NOTE: only {tally.get('opened')} of {args.idle} idle sockets opened")
        for label, phase in (("flooding client", flooded), ("unauthenticated sockets", idled)):
            if phase.p(0.99) > RATIO_LIMIT * base.p(0.99):
                errors.append(
                    f"healthy p99 with {label} {phase.p(0.99):.1f} ms, over {RATIO_LIMIT:g}x "
                    f"the {base.p(0.99):.1f} ms without"
                )
        print("\nresult: " + ("PASS" if not errors else "FAIL: " + "; ".join(errors[:5])))
        return 1 if errors else 0
    finally:
        await session.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__)
    parser.add_argument("--healthy", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each phase")
    parser.add_argument("--rate", type=float, default=25.0, help="broadcasts per second")
    parser.add_argument("--idle", type=int, default=1000, help="unauthenticated sockets")
    parser.add_argument(
        "--max-fps", type=float, default=0.0, help="BIFROST_MAX_FRAMES_PER_SECOND (default: its)"
    )
    args = parser.parse_args(argv)
    return uvloop.run(_run(args))


if __name__ == "__main__":
    raise SystemExit(main())
