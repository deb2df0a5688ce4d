"""The open-file limit and the accept queue are raised at start-up to what the connection
limit needs."""

from __future__ import annotations

import resource
import shutil
import subprocess
from pathlib import Path

import pytest

from bifrost.limits import FILES_BESIDES_SOCKETS, raise_open_file_limit
from bifrost.rules.admission import REFUSAL_HEADROOM

SOMAXCONN = int(Path("/proc/sys/net/core/somaxconn").read_text())


def test_soft_limit_is_raised_towards_the_hard_limit():
    """A soft limit below what the connections and their 503s need is raised, never past the
    hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        now = raise_open_file_limit(1000)
        assert now == min(1000 + REFUSAL_HEADROOM + FILES_BESIDES_SOCKETS, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == now
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def listen_backlog(port: int) -> int:
    """The accept queue's length of the socket listening on `port`, as the kernel reports it
    (`ss` shows it as the listening socket's Send-Q)."""
    ss = shutil.which("ss")
    assert ss, "the backlog is read with ss (Debian's iproute2)"
    listing = subprocess.run(
        [ss, "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(listing[2])


@pytest.mark.parametrize("args", [("--single-process",), ()], ids=["single-process", "worker"])
def test_the_accept_queue_holds_a_reconnect_storm(start_server, args):
    """The listening socket queues as many connections as the process may hold, those it
    answers 503 included (the kernel capping it), not Sanic's 100: a deploy's reconnecting
    browsers wait instead of being dropped and retrying seconds later."""
    live = start_server({"BIFROST_MAX_CONNECTIONS": "1500"}, args=args, name="backlog")
    assert listen_backlog(live.port) == min(1500 + REFUSAL_HEADROOM, SOMAXCONN)


def test_a_small_connection_limit_keeps_sanics_accept_queue(start_server):
    """With room for 5 sockets the queue stays Sanic's 100: connections it would answer 503
    or close past the headroom must reach it, not be dropped by the kernel."""
    live = start_server({"BIFROST_MAX_CONNECTIONS": "5"}, name="backlog-small")
    assert listen_backlog(live.port) == min(100, SOMAXCONN)
