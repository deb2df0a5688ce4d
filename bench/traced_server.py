"""Bifröst under tracemalloc, with a bench-only endpoint that snapshots its heap.

    python -m bench.traced_server HOST PORT SNAPSHOT_DIR

Serves `bifrost.app` exactly as `sanic bifrost.app --single-process` does, plus
`GET /bench/heap/<name>`: a full garbage collection, then a tracemalloc snapshot written to
SNAPSHOT_DIR/<name>.tracemalloc and, in the answer, the traced bytes and the count of live
objects by type. Used by `bench.memory` only; the service itself is unchanged.
"""

from __future__ import annotations

import gc
import os
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

__all__: list[str] = []

FRAMES = int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "12"))


def main() -> None:
    host, port, snapshot_dir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    tracemalloc.start(FRAMES)
    from sanic.response import json

    from bifrost.app import app

    @app.get("/bench/heap/<name:str>")
    async def heap(request: object, name: str) -> object:
        gc.collect()
        types = Counter(type(o).__qualname__ for o in gc.get_objects())
        snapshot = tracemalloc.take_snapshot()
        path = snapshot_dir / f"{name}.tracemalloc"
        snapshot.dump(str(path))
        traced, _peak = tracemalloc.get_traced_memory()
        return json({"path": str(path), "traced": traced, "types": dict(types)})

    app.run(host=host, port=port, single_process=True, access_log=False)


if __name__ == "__main__":
    main()
