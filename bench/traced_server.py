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
import types
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

    @app.get("/bench/referrers/<name:str>")
    async def referrers(request: object, name: str) -> object:
        """Chains of referrers (a few levels up) of up to 3 live objects of the named type:
        what keeps objects alive that should have gone."""
        gc.collect()
        found = [o for o in gc.get_objects() if type(o).__qualname__ == name]
        return json({"count": len(found), "chains": [_chain(o) for o in found[:3]]})

    app.run(host=host, port=port, single_process=True, access_log=False)


def _describe(obj: object) -> str:
    kind = type(obj).__qualname__
    if isinstance(obj, types.FrameType):
        return f"frame {obj.f_code.co_qualname} ({obj.f_code.co_filename}:{obj.f_lineno})"
    if isinstance(obj, types.CoroutineType):
        return f"coroutine {obj.__qualname__}"
    if isinstance(obj, dict):
        return f"dict keys={list(obj)[:6]}"
    if isinstance(obj, (list, tuple, set, frozenset)):
        return f"{kind} len={len(obj)}"
    text = repr(obj)
    return f"{kind}: {text[:120]}"


def _chain(obj: object, depth: int = 7) -> list[list[str]]:
    """Breadth-first referrers of `obj`, level by level, skipping this module's own frames."""
    levels: list[list[str]] = []
    current = [obj]
    seen = {id(obj)}
    for _ in range(depth):
        nxt = []
        for item in current:
            for ref in gc.get_referrers(item):
                if id(ref) in seen or ref is current or ref is nxt:
                    continue
                if isinstance(ref, types.FrameType) and ref.f_code.co_filename == __file__:
                    continue
                if isinstance(ref, list) and len(ref) > 1000:  # gc.get_objects() results
                    continue
                seen.add(id(ref))
                nxt.append(ref)
        if not nxt:
            break
        levels.append([_describe(r) for r in nxt[:8]])
        current = nxt[:8]
    return levels


if __name__ == "__main__":
    main()
