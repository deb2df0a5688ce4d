"""The cyclic garbage collector, set for a process that holds thousands of long-lived sockets.

With CPython's defaults (a young generation of 700 objects), a reconnect storm on a node
spent about 40 µs of each reconnection's 240 in collections: each socket's objects outlived
a few young collections, and the full collections that the growing heap set off traversed
everything start-up had made (about 75,000 objects: modules, routes, settings, schemas) as
well as every socket's, again and again. Frozen after start-up, those are left out of every
collection; a young generation of 20,000 lets a connection's short-lived objects die before
they are promoted. Measured in `bench/RESULTS.md` (the reconnect storm).
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_GENERATION", "settle_collector"]

# Objects allocated (less those freed) between young collections; CPython's default is 700.
YOUNG_GENERATION = 20_000
# Young collections between middle ones, and middle ones between full ones (defaults: 10, 10).
MIDDLE_GENERATION = 20
OLD_GENERATION = 10


def settle_collector() -> None:
    """Collect start-up's garbage, freeze what is left, and widen the young generation."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION, MIDDLE_GENERATION, OLD_GENERATION)
