"""Where an idle authenticated Bifröst socket's memory goes: tracemalloc and live objects.

    python -m bench.memory [--sockets 2000] [--churn SECONDS]

Starts Bifröst under tracemalloc (`bench.traced_server`), snapshots its heap, connects and
authenticates the sockets, snapshots again, and prints per socket: the RSS growth, the growth
of memory Python allocated (the rest is C allocations outside Python's allocator: libuv
handles, OpenSSL, malloc fragmentation), the allocation sites that grew most, and the live
objects by type that each socket added. tracemalloc costs memory of its own (about 16 bytes
per traced block); RSS per socket is therefore read from a plain run by `python -m bench`.

With `--churn SECONDS`, the second snapshot is taken instead after that long of churn
(`bench.attackers.churn`: sockets that connect, authenticate and leave with a reset) once every
churned socket is gone: whatever grew then is what departed connections left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import uvloop

from bench.attackers import Child, run_churn
from bench.servers import (
    BENCH_DIR,
    REPO_DIR,
    VARIANT_ENV,
    NodeSpec,
    ServerSpec,
    bifrost_max_connections,
)
from bench.session import Session

__all__ = ["main"]

SNAPSHOT_DIR = BENCH_DIR / ".profiles"
SETTLE_S = 2.0
TRACED_READY_TIMEOUT_S = 120.0
TOP = 25


def traced_bifrost(next_port: Callable[[], int], secret: str) -> ServerSpec:
    port = next_port()
    SNAPSHOT_DIR.mkdir(exist_ok=True)
    argv = (
        sys.executable,
        "-m",
        "bench.traced_server",
        "127.0.0.1",
        str(port),
        str(SNAPSHOT_DIR),
    )
    env = {
        "JWT_SECRET": secret,
        "BIFROST_MAX_CONNECTIONS": str(bifrost_max_connections()),
        "PYTHONUNBUFFERED": "1",
    }
    cwd = REPO_DIR
    if variant := os.environ.get(VARIANT_ENV):
        # The variant's folder first on sys.path for `bifrost`, the tree for `bench`.
        cwd, env["PYTHONPATH"] = Path(variant).resolve(), str(REPO_DIR)
    # Importing everything under tracemalloc takes a while on a busy machine.
    node = NodeSpec(argv, port, env, cwd=cwd, ready_timeout_s=TRACED_READY_TIMEOUT_S)
    return ServerSpec("bifrost-traced", "Bifröst (tracemalloc)", (node,))


def _owner(trace: tracemalloc.StatisticDiff) -> tuple[str, str]:
    """The innermost frame in a library or the service (not asyncio or other stdlib), whose
    code asked for the memory, as `package/file.py:line`, and its `package/file.py`."""
    for frame in reversed(trace.traceback):  # tracemalloc keeps the oldest frame first
        if "site-packages" in frame.filename or str(REPO_DIR) in frame.filename:
            path = Path(frame.filename)
            module = f"{path.parent.name}/{path.name}"
            return f"{module}:{frame.lineno}", module
    frame = trace.traceback[-1]
    module = Path(frame.filename).name
    return f"{module}:{frame.lineno}", module


def _table(totals: dict[str, list[int]], sockets: int, top: int) -> list[str]:
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
    return [f"  {size / sockets:8.0f} B  {n / sockets:5.1f}  {name}" for name, (size, n) in ranked]


async def _run(args: argparse.Namespace) -> int:
    session = await Session.start("memory", topology=traced_bifrost, generators=2)
    try:
        await session.phase(1)
        await asyncio.sleep(SETTLE_S)
        status, before = await session.http.get_json("/bench/heap/before")
        rss0 = session.rss()
        if args.churn:
            host, port = session.host_port
            churn = Child(run_churn, host, port, session.secret, args.churn, 100, 1, 1.0)
            tally = await churn.result(args.churn + 60.0)
            print(f"churn: {tally}")
            n = int(tally.get("connected", 0)) or 1
            what = "departed churned sockets"
        else:
            await session.connect(args.sockets)
            n = args.sockets
            what = "idle authenticated sockets"
        await asyncio.sleep(SETTLE_S)
        stats = await session.stats()
        print(f"after: {stats}")
        status, after = await session.http.get_json("/bench/heap/after")
        rss1 = session.rss()
        if status != 200:
            print(f"heap snapshot failed: {status} {after!r}", file=sys.stderr)
            return 1
        print(f"{n} {what} (tracemalloc on, {tracemalloc_note()})")
        print(f"RSS growth per socket:            {(rss1 - rss0) / n / 1024:6.1f} KiB")
        traced = (after["traced"] - before["traced"]) / n
        print(f"Python-allocated growth per socket: {traced / 1024:6.1f} KiB (tracemalloc)")
        first = tracemalloc.Snapshot.load(before["path"])
        second = tracemalloc.Snapshot.load(after["path"])
        diffs = second.compare_to(first, "traceback")
        by_line: dict[str, list[int]] = {}
        by_module: dict[str, list[int]] = {}
        for diff in diffs:
            if diff.size_diff <= 0:
                continue
            line, module = _owner(diff)
            for totals, key in ((by_line, line), (by_module, module)):
                entry = totals.setdefault(key, [0, 0])
                entry[0] += diff.size_diff
                entry[1] += diff.count_diff
        print("\ngrowth per socket by the module that asked for it (bytes, blocks):")
        print("\n".join(_table(by_module, n, TOP)))
        print("\ngrowth per socket by the line that asked for it (bytes, blocks):")
        print("\n".join(_table(by_line, n, TOP)))
        print("\nlive objects added per socket, by type (gc-tracked):")
        grown = {
            name: (count - before["types"].get(name, 0)) / n
            for name, count in after["types"].items()
        }
        for name, per in sorted(grown.items(), key=lambda kv: -kv[1])[:TOP]:
            if per >= 0.5:
                print(f"  {per:6.1f}  {name}")
        return 0
    finally:
        await session.close()


def tracemalloc_note() -> str:
    return "each traced block costs tracemalloc memory too, so RSS here is above a plain run"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--churn", type=float, default=0.0, help="seconds of churn instead")
    args = parser.parse_args(argv)
    return uvloop.run(_run(args))


if __name__ == "__main__":
    raise SystemExit(main())
