"""The process's open-file limit, raised to what the connection limit needs where allowed.

Every socket is a file descriptor: with the common soft limit of 1,024, a process set to hold
10,000 connections would fail on accept long before refusing handshakes with a clear 503. The
limit leaves room past the connection limit for the connections that are answered 503.
"""

from __future__ import annotations

import logging
import resource

from bifrost.rules.admission import REFUSAL_HEADROOM

__all__ = ["FILES_BESIDES_SOCKETS", "raise_open_file_limit"]

logger = logging.getLogger("bifrost")

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
