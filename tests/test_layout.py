"""The layout's promise: the rules do no I/O, and the clients need nothing of the server."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bifrost"
IO_LIBRARIES = ("asyncio", "sanic", "sanic_ext", "redis", "httpx")


def imported_modules(path: Path, *, anywhere: bool) -> set[str]:
    """Every module a file imports, by its full name: `anywhere` in it, or when it is imported
    itself (an import inside a function, as `bifrost serve` starting the server, waits for
    a call)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree) if anywhere else tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((PACKAGE / "rules").glob("*.py")), ids=lambda p: p.name)
def test_a_rule_module_imports_no_io(path: Path):
    """A module of `bifrost/rules/` imports neither Sanic, asyncio, Redis nor an HTTP client."""
    io = {m for m in imported_modules(path, anywhere=True) if m.split(".")[0] in IO_LIBRARIES}
    assert not io, f"{path.name} imports {sorted(io)}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "client").glob("*.py")), ids=lambda p: p.name)
def test_a_client_module_imports_nothing_of_the_server(path: Path):
    """The SDK and the command import only the rules they share with the server, so that an
    application loads none of it; `bifrost serve` imports the server when it starts it."""
    ours = {m for m in imported_modules(path, anywhere=False) if m.startswith("bifrost.")}
    server = {m for m in ours if not m.startswith(("bifrost.rules", "bifrost.client"))}
    assert not server, f"{path.name} imports {sorted(server)}"
