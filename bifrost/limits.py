"""The process's open-file limit and its listening sockets' accept queue, raised to what the
connection limit needs where allowed.

Every socket is a file descriptor: with the common soft limit of 1,024, a process set to hold
10,000 connections would fail on accept long before refusing handshakes with a clear 503. The
limit leaves room past the connection limit for the connections that are answered 503.

Sanic listens with a backlog of 100, which its command line cannot change: when a deploy's
1012 sends thousands of browsers to the node still up, the kernel drops what does not fit
and those clients retry their connection 1, 3 and 7 s later, long enough to fall out of reach
of the history. Listening again on the bound socket with a longer backlog is how a running
server changes it (the kernel caps it at `net.core.somaxconn`).
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import stat

from bifrost.rules.admission import REFUSAL_HEADROOM

__all__ = ["FILES_BESIDES_SOCKETS", "raise_open_file_limit", "widen_accept_queues"]

logger = logging.getLogger("bifrost")

# Where Linux lists a process's open descriptors; elsewhere the backlog stays Sanic's.
PROCESS_DESCRIPTORS = "/proc/self/fd"
# Descriptors the process holds besides client sockets: listeners, logs, broker, imports.
FILES_BESIDES_SOCKETS = 64


def raise_open_file_limit(max_connections: int) -> int:
    """Raise the soft limit up to the hard one; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + REFUSAL_HEADROOM + FILES_BESIDES_SOCKETS
    if soft < wanted and (hard == resource.RLIM_INFINITY or soft < hard):
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as error:
            logger.warning("could not raise the open-file limit from %d: %s", soft, error)
    if soft < wanted:
        logger.warning(
            "open-file limit %d is below BIFROST_MAX_CONNECTIONS=%d plus %d: sockets past it "
            "will fail to connect; raise `ulimit -n` or lower BIFROST_MAX_CONNECTIONS",
            soft,
            max_connections,
            REFUSAL_HEADROOM + FILES_BESIDES_SOCKETS,
        )
    return soft


def widen_accept_queues(backlog: int) -> int:
    """Let each TCP socket this process listens on queue `backlog` connections not yet
    accepted; return how many it found.

    The sockets are found among the process's descriptors, since Sanic keeps the one it
    listens on to itself, bound by the main process or by the worker depending on how it was
    started: a descriptor of a socket that accepts connections is a listening one.
    """
    widened = 0
    for name in os.listdir(PROCESS_DESCRIPTORS) if os.path.isdir(PROCESS_DESCRIPTORS) else ():
        try:
            if not stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                continue
            duplicate = os.dup(int(name))
        except OSError:
            continue  # closed since the folder was read
        try:
            same = socket.socket(fileno=duplicate)
        except OSError:
            os.close(duplicate)
            continue
        with same:
            listening = same.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            if listening and same.type == socket.SOCK_STREAM:
                same.listen(backlog)
                widened += 1
    return widened
