"""Issue 5: does one subscriber that never reads slow down everyone else?

    python -m bench.slow_consumer [--healthy 50] [--broadcasts 2000] [--rate 200]

One Bifröst, `--healthy` checked subscribers on one channel. The same paced broadcasts are sent
twice in one run: first with the healthy subscribers alone, then with one more subscriber on
the channel that never reads (a `websockets` client with max_queue=1 that never calls recv, so
its kernel buffers fill and then the server's). Messages carry `--padding` bytes so that the
stalled socket's backlog passes BIFROST_MAX_PENDING_BYTES (1 MiB) within the run.

Prints the healthy subscribers' latency in both phases and the p99 ratio (must be <= 2),
whether the server closed the stalled socket (it leaves /info.json's `connected`), and the
server's RSS at the start, its peak and at the end. Exit status 1 when a frame was lost, the
ratio is over 2 or the stalled socket was not closed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

import orjson
import uvloop
from websockets.asyncio.client import connect

from bench.keepalive import KeepAliveClient
from bench.plan import channel_name
from bench.session import Session, fmt_mib, wait_until
from bench.tokens import subscribe_token

__all__ = ["main"]

RATIO_LIMIT = 2.0
SAMPLE_EVERY_S = 0.25


class Watcher:
    """Samples the server's RSS and notes when `connected` drops to the healthy count.

    It has its own HTTP connection: the session's is busy with the phases meanwhile.
    """

    def __init__(self, session: Session, healthy: int) -> None:
        self.session = session
        self.healthy = healthy
        self.peak_rss = session.rss()
        self.armed_at: float | None = None
        self.closed_after_s: float | None = None
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._watch())

    def arm(self) -> None:
        """From now on, note when the stalled socket is gone."""
        self.armed_at = time.monotonic()

    async def _watch(self) -> None:
        host, port = self.session.host_port
        http = KeepAliveClient(host, port)
        try:
            while not self._stop.is_set():
                self.peak_rss = max(self.peak_rss, self.session.rss())
                if self.armed_at is not None and self.closed_after_s is None:
                    _, body = await http.get_json("/info.json")
                    if body["stats"]["connected"] <= self.healthy:
                        self.closed_after_s = time.monotonic() - self.armed_at
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), SAMPLE_EVERY_S)
        finally:
            await http.close()

    async def stop(self) -> None:
        self._stop.set()
        await self._task


async def _run(args: argparse.Namespace) -> int:
    session = await Session.start("slow-consumer", generators=2)
    failures: list[str] = []
    try:
        await session.connect(args.healthy)
        await session.phase(10, padding_bytes=args.padding)  # warm-up
        rss_start = session.rss()
        watcher = Watcher(session, args.healthy)
        print(
            f"Bifröst pid {session.pid}: {args.healthy} healthy subscribers, {args.broadcasts} "
            f"broadcasts at {args.rate:g}/s of {args.padding:,} bytes of padding, twice"
        )
        print(f"start: {await session.readings()}")

        alone = await session.phase(args.broadcasts, rate=args.rate, padding_bytes=args.padding)
        print(f"\nwithout the stalled subscriber: {alone.line()}")

        url = session.server.subscribe_urls[0]
        token = subscribe_token(session.secret, [channel_name(0)], "stalled")
        stalled = await connect(url, max_queue=1, open_timeout=10, close_timeout=1)
        await stalled.send(orjson.dumps({"event": "authenticate", "data": token}).decode())
        # It never calls recv: whether it is subscribed is read from the server instead.
        subscribed = await wait_until(
            lambda: _subscriptions_at_least(session, args.healthy + 1), 10.0
        )
        if not subscribed:
            failures.append("the stalled subscriber was never subscribed")
        watcher.arm()
        stalled_phase = await session.phase(
            args.broadcasts, rate=args.rate, padding_bytes=args.padding, exact_deliveries=False
        )
        print(f"with one stalled subscriber:    {stalled_phase.line()}")
        closed = await wait_until(lambda: _connected_at_most(session, args.healthy), 5.0)
        await watcher.stop()
        ratio = stalled_phase.p(0.99) / alone.p(0.99) if alone.p(0.99) else float("inf")
        print(
            f"\nhealthy p99 with / without the stalled one: {stalled_phase.p(0.99):.2f} / "
            f"{alone.p(0.99):.2f} ms = {ratio:.2f} (limit {RATIO_LIMIT:g})"
        )
        print(
            f"stalled subscriber closed by the server: {'yes' if closed else 'NO'}"
            + (
                f" ({watcher.closed_after_s:.1f} s after its first broadcast)"
                if watcher.closed_after_s is not None
                else ""
            )
        )
        print(
            f"server RSS: start {fmt_mib(rss_start)}, peak {fmt_mib(watcher.peak_rss)}, "
            f"end {fmt_mib(session.rss())}"
        )
        print(f"end: {await session.readings()}")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(stalled.close(), 2.0)
        for phase in (alone, stalled_phase):
            failures.extend(phase.errors)
        if ratio > RATIO_LIMIT:
            failures.append(f"p99 ratio {ratio:.2f} over {RATIO_LIMIT:g}")
        if not closed:
            failures.append("the stalled subscriber was not closed")
        print("\nresult: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures[:5])))
        return 1 if failures else 0
    finally:
        await session.close()


async def _subscriptions_at_least(session: Session, count: int) -> bool:
    return int((await session.stats()).get("subscriptions", 0)) >= count


async def _connected_at_most(session: Session, count: int) -> bool:
    return int((await session.stats()).get("connected", 0)) <= count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_consumer", description=__doc__)
    parser.add_argument("--healthy", type=int, default=50)
    parser.add_argument("--broadcasts", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0, help="broadcasts per second")
    parser.add_argument("--padding", type=int, default=8192, help="bytes of padding a message")
    args = parser.parse_args(argv)
    return uvloop.run(_run(args))


if __name__ == "__main__":
    raise SystemExit(main())
