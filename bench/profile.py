"""Where Bifröst's CPU goes under scenario (a): py-spy on the server while the bench loads it.

    python -m bench.profile [--subscribers 2000] [--broadcasts 400] [--native]

Starts one Bifröst, connects the subscribers (profiled: the connect+subscribe path), then sends
the broadcasts flat out on one channel (profiled: the fan-out path). For each phase py-spy
records the server (`py-spy record --pid`; non-blocking sampling, so that the server is not
paused, unless `--native`, which must pause it to see C frames) into
`bench/.profiles/<phase>.svg` (a flame graph) and `<phase>.txt` (collapsed stacks), and this
prints the top functions by own and by inclusive samples, and the server's user/kernel CPU
split from /proc. Needs `pip install py-spy`.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import uvloop

from bench.servers import BENCH_DIR, LOG_DIR
from bench.session import Session

__all__ = ["PROFILE_DIR", "Recording", "have_py_spy", "main", "summarize"]

PROFILE_DIR = BENCH_DIR / ".profiles"
SAMPLE_RATE_HZ = 250
PY_SPY_STOP_TIMEOUT_S = 60.0
TOP = 22
LOOP_FRAMES = frozenset({"run_forever", "run_until_complete", "_run_server_forever"})
"""A sample whose innermost Python frame is one of these was in the event loop's own code."""


def _spy(pid: int, out: Path, fmt: str, native: bool) -> subprocess.Popen[bytes]:
    argv = [
        "py-spy",
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(SAMPLE_RATE_HZ),
        "--format",
        fmt,
        "--output",
        str(out),
    ]
    # Native stacks need the process paused at each sample; Python stacks alone do not.
    argv.append("--native" if native else "--nonblocking")
    LOG_DIR.mkdir(exist_ok=True)
    with (LOG_DIR / f"py-spy-{out.stem}.log").open("wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


class Recording:
    """py-spy recording the server in two formats at once: raw stacks and a flame graph."""

    def __init__(self, pid: int, phase: str, native: bool) -> None:
        PROFILE_DIR.mkdir(exist_ok=True)
        self.raw = PROFILE_DIR / f"{phase}.txt"
        self.svg = PROFILE_DIR / f"{phase}.svg"
        for stale in (self.raw, self.svg):
            stale.unlink(missing_ok=True)
        self.spies = [
            _spy(pid, self.raw, "raw", native),
            _spy(pid, self.svg, "flamegraph", native),
        ]

    def stop(self) -> None:
        for spy in self.spies:
            spy.send_signal(signal.SIGINT)
        for spy in self.spies:
            try:
                spy.wait(PY_SPY_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(PY_SPY_STOP_TIMEOUT_S)


def have_py_spy() -> bool:
    """Whether py-spy is on the PATH; if not, say how to get it."""
    if shutil.which("py-spy") is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return False
    return True


def _function(frame: str) -> str:
    """`name (path/to/file.py:123)` -> `name (file.py)`: lines of one function merged."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({Path(path).name})" if path else name


def _package(frames: list[str]) -> str:
    """Whose code a sample was in: the package of the innermost frame outside the standard
    library (asyncio's streams count for whoever called them) and outside functions compiled
    without a file (Sanic's), `bifrost` by module; the loop's own frame is the event loop's
    C code."""
    for frame in reversed(frames):
        name, _, where = frame.partition(" (")
        if name in LOOP_FRAMES:
            return "(event loop, C)"
        path = where.rstrip(")").rsplit(":", 1)[0]
        parts = path.split("/")
        if len(parts) < 2 or parts[0].startswith("<") or parts[0] in sys.stdlib_module_names:
            continue
        return "/".join(parts[:2]) if parts[0] == "bifrost" else parts[0]
    return "(other)"


def summarize(raw: Path, top: int = TOP) -> list[str]:
    """Top functions by own samples and by inclusive samples, and shares by package, from
    py-spy's collapsed stacks."""
    if not raw.exists():
        return [f"(no profile: see {LOG_DIR}/py-spy-{raw.stem}.log)"]
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw_frames = stack.split(";")
        if raw_frames[0].startswith(("process ", "thread (")):
            raw_frames = raw_frames[1:]
        frames = [_function(f) for f in raw_frames]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
        packages[_package(raw_frames)] += count
    if not total:
        return ["(no samples)"]
    lines = [f"{total} samples", "", "own samples (where the CPU was):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive samples (what it was doing):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", "own samples by package (standard library: its caller's):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in packages.most_common(top)]
    return lines


async def _run(args: argparse.Namespace) -> int:
    session = await Session.start("profile", generators=args.generators)
    try:
        pid = session.pid
        print(f"Bifröst pid {pid}; profiling with py-spy at {SAMPLE_RATE_HZ} Hz", flush=True)
        await session.phase(1)  # warm the broadcast path before any recording

        recording = Recording(pid, "connect", args.native)
        await asyncio.sleep(1.0)  # py-spy attaches
        cpu0 = session.server.sample()
        await session.connect(args.subscribers)
        cpu1 = session.server.sample()
        recording.stop()
        per = 1e6 / args.subscribers
        print(
            f"\n== connect+subscribe of {args.subscribers} sockets: server "
            f"{(cpu1.cpu_s - cpu0.cpu_s) * per:.0f} µs CPU per socket "
            f"(user {(cpu1.user_s - cpu0.user_s) * per:.0f}, "
            f"kernel {(cpu1.sys_s - cpu0.sys_s) * per:.0f})"
        )
        print("\n".join(summarize(recording.raw)))

        recording = Recording(pid, "fanout", args.native)
        await asyncio.sleep(1.0)
        cpu0 = session.server.sample()
        phase = await session.phase(args.broadcasts)
        cpu1 = session.server.sample()
        recording.stop()
        per = 1e6 / max(1, phase.frames)
        print(
            f"\n== fan-out, {args.broadcasts} broadcasts to {args.subscribers}: {phase.line()}\n"
            f"server {(cpu1.cpu_s - cpu0.cpu_s) * per:.2f} µs CPU per frame "
            f"(user {(cpu1.user_s - cpu0.user_s) * per:.2f}, "
            f"kernel {(cpu1.sys_s - cpu0.sys_s) * per:.2f})"
        )
        print("\n".join(summarize(recording.raw)))
        print(f"\nflame graphs: {PROFILE_DIR}/connect.svg, {PROFILE_DIR}/fanout.svg")
        return 1 if phase.errors else 0
    finally:
        await session.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--broadcasts", type=int, default=400)
    parser.add_argument("--generators", type=int, default=4)
    parser.add_argument("--native", action="store_true", help="include C frames (py-spy)")
    args = parser.parse_args(argv)
    if not have_py_spy():
        return 2
    return uvloop.run(_run(args))


if __name__ == "__main__":
    raise SystemExit(main())
