"""CPU time and resident memory of a server's process tree, read straight from /proc.

The headline figure (server CPU per delivered frame) is defined by the kernel's own accounting:
utime+stime of every process in the tree, plus cutime+cstime for children already reaped, so
that a worker that exits mid-run still counts. Reading /proc ourselves keeps that definition in
one visible place instead of behind a library's choices.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "TreeSample",
    "descendants",
    "listen_overflows",
    "machine_idle_s",
    "reset_tree_peak",
    "sample_tree",
    "syn_retransmits",
    "tree_peak_rss",
]

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class TreeSample:
    """One reading of a process tree: CPU seconds used so far and bytes resident now."""

    cpu_s: float
    rss_bytes: int
    pids: tuple[int, ...]
    user_s: float = 0.0
    sys_s: float = 0.0


@dataclass(frozen=True, slots=True)
class _Stat:
    ppid: int
    cpu_ticks: int
    rss_pages: int
    user_ticks: int = 0
    sys_ticks: int = 0


def _read_stat(pid: int) -> _Stat | None:
    """Parse /proc/<pid>/stat, or None when the process has gone meanwhile."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); so field n is fields[n - 3].
    utime, stime, cutime, cstime = (int(fields[n - 3]) for n in (14, 15, 16, 17))
    return _Stat(
        ppid=int(fields[1]),
        cpu_ticks=utime + stime + cutime + cstime,
        rss_pages=int(fields[21]),
        user_ticks=utime + cutime,
        sys_ticks=stime + cstime,
    )


def descendants(roots: Iterable[int]) -> set[int]:
    """The given pids and every live process below them."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _read_stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat.ppid, []).append(int(entry.name))
    found: set[int] = set()
    pending = list(roots)
    while pending:
        pid = pending.pop()
        if pid in found:
            continue
        found.add(pid)
        pending.extend(children.get(pid, ()))
    return found


def sample_tree(roots: Iterable[int]) -> TreeSample:
    """CPU seconds (user+system, children included) and RSS summed over the tree.

    RSS is summed per process, so pages shared between forked workers count once per worker:
    an upper bound, which is the safe side for a memory target.
    """
    ticks = user = system = 0
    rss_pages = 0
    alive: list[int] = []
    for pid in sorted(descendants(roots)):
        stat = _read_stat(pid)
        if stat is None:
            continue
        ticks += stat.cpu_ticks
        user += stat.user_ticks
        system += stat.sys_ticks
        rss_pages += stat.rss_pages
        alive.append(pid)
    return TreeSample(
        ticks / CLOCK_TICKS_PER_S,
        rss_pages * PAGE_BYTES,
        tuple(alive),
        user / CLOCK_TICKS_PER_S,
        system / CLOCK_TICKS_PER_S,
    )


def reset_tree_peak(roots: Iterable[int]) -> None:
    """Set each process's peak RSS (VmHWM) back to its RSS now, so that `tree_peak_rss` reads
    the peak of what follows: writing 5 to /proc/<pid>/clear_refs does that (Linux 4.0+)."""
    for pid in descendants(roots):
        try:
            (PROC / str(pid) / "clear_refs").write_text("5")
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile


def tree_peak_rss(roots: Iterable[int]) -> int:
    """Bytes of peak RSS (VmHWM of /proc/<pid>/status) summed over the live tree, as RSS is."""
    total_kib = 0
    for pid in descendants(roots):
        try:
            lines = (PROC / str(pid) / "status").read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in lines:
            if line.startswith("VmHWM:"):
                total_kib += int(line.split()[1])  # "VmHWM:   12345 kB"
                break
    return total_kib * 1024


def _tcp_ext(name: str) -> int:
    """A TcpExt counter of /proc/net/netstat (machine-wide), 0 if the kernel has none."""
    lines = (PROC / "net" / "netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get(name, 0))
    return 0


def machine_idle_s() -> float:
    """Seconds the machine's cores have spent idle so far, all cores summed (/proc/stat):
    over a span, the span times the core count less this is what every process took."""
    fields = (PROC / "stat").read_text().split("\n", 1)[0].split()
    idle, iowait = int(fields[4]), int(fields[5])
    return (idle + iowait) / CLOCK_TICKS_PER_S


def listen_overflows() -> int:
    """Connections the kernel dropped so far because a listener's accept queue was full
    (TcpExt ListenOverflows, machine-wide): a server that takes many sockets at once and
    listens with a short backlog leaves its clients to retransmit their SYNs, 1 s, 3 s, 7 s on."""
    return _tcp_ext("ListenOverflows")


def syn_retransmits() -> int:
    """SYNs sent again so far (TcpExt TCPSynRetrans, machine-wide): on loopback, the clients'
    answer to a listener that dropped their first one."""
    return _tcp_ext("TCPSynRetrans")
