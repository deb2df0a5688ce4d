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
import signal
import subprocess
import time
from dataclasses import dataclass, field

import uvloop

from bench.broadcaster import broadcast_steadily
from bench.plan import channel_name
from bench.procfs import listen_overflows, sample_tree
from bench.recovery import (
    close_lines,
    ms,
    positioned_pair,
    return_lines,
    verify_delivery,
    wait_back,
)
from bench.servers import STOP_TIMEOUT_S, bifrost_redis_pair, restart_node
from bench.session import Session

__all__ = ["main"]

NODE_NAMES = ("A", "B")
BACK_TIMEOUT_S = 60.0
"""How long the displaced sockets may take to be subscribed again before the run fails."""


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


async def _all_back(session: Session, restart: Restart, others: list[int]) -> None:
    """Wait until every socket the node had at SIGTERM is subscribed again somewhere; note
    what the return cost the processes `others` (the nodes still up, Redis) and the
    generators."""
    status = await session.swarm.status(returns=False)
    cpu0, generators0, overflows0 = sample_tree(others).cpu_s, status["cpu_s"], listen_overflows()
    restart.back_ns, status = await wait_back(
        session, restart.sigterm_ns, restart.displaced, BACK_TIMEOUT_S
    )
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
    status = await session.swarm.status(returns=False)
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
        f"{ms(restart.exited_ns - restart.sigterm_ns)}, ready again "
        f"{ms(restart.ready_ns - restart.exited_ns)} later"
    ]
    if restart.killed:
        faults.append(f"node {restart.name} did not exit within {STOP_TIMEOUT_S:g} s of SIGTERM")
    closes, close_faults = close_lines(restart.name, returns, restart.displaced)
    lines += closes
    faults += close_faults
    if not returns:
        return lines, faults
    if restart.back_ns:
        lines.append(
            f"  all subscribed again {ms(restart.back_ns - restart.sigterm_ns)} after SIGTERM; "
            f"meanwhile the other node and Redis used {restart.server_cores:.2f} cores, the "
            f"busiest generator {restart.generator_cores:.2f}; {restart.listen_overflows:,} "
            "connections dropped by full accept queues (machine-wide)"
        )
    else:
        faults.append(f"node {restart.name}: not all back within {BACK_TIMEOUT_S:g} s")
    return lines + return_lines(returns, history), faults


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
        delivery = await verify_delivery(
            session, sent, args.subscribers, session.server.http_url, args.timeout
        )
        returns = delivery.status["returns"]
        ends = [r.sigterm_ns for r in restarts[1:]] + [time.monotonic_ns()]
        for restart, end in zip(restarts, ends, strict=True):
            restart.returns = [r for r in returns if restart.sigterm_ns <= r[0] < end]
        print()
        for restart in restarts:
            lines, restart_faults = _describe(restart, args.history)
            print("\n".join(lines))
            faults += restart_faults
        print("\n" + "\n".join(delivery.lines))
        faults += delivery.faults
        print("\nresult: " + ("PASS" if not faults else "FAIL: " + "; ".join(faults)))
        return 1 if faults else 0
    finally:
        await session.close()


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
