"""How many frames a client may send: a token bucket per socket, with no I/O.

A client in a loop of sends must not be able to eat the worker's CPU that every other
subscriber shares; an honest client pings every ten seconds and authenticates once.
"""

from __future__ import annotations

__all__ = ["FrameBudget"]


class FrameBudget:
    """Allows `rate` frames a second on average, in bursts of up to `rate` (at least one)."""

    __slots__ = ("_available", "_capacity", "_rate", "_updated")

    def __init__(self, rate: float, now: float) -> None:
        self._rate = rate
        self._capacity = max(rate, 1.0)
        self._available = self._capacity
        self._updated = now

    def spend(self, now: float) -> bool:
        """Take one frame from the budget; False when the client is over its rate."""
        refill = (now - self._updated) * self._rate
        self._available = min(self._capacity, self._available + refill)
        self._updated = now
        if self._available < 1:
            return False
        self._available -= 1
        return True
