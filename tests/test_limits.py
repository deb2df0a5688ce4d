"""The open-file limit is raised at start-up to what the connection limit needs."""

from __future__ import annotations

import resource

from bifrost.limits import FILES_BESIDES_SOCKETS, raise_open_file_limit
from bifrost.rules.admission import REFUSAL_HEADROOM


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
