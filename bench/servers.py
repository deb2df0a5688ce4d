"""The servers under test, described as data: each node is a command, an environment and a port.

A topology is a function from free ports and the shared secret to a `ServerSpec`. The two
built in are one Bifröst process and the Node reference; a later scenario with two Bifröst
nodes through Redis adds a topology returning two `NodeSpec`s (and `extra_pids` for a Redis it
starts itself, should its CPU count too) without touching the runner: the runner spreads
subscribers over every node's URL and accounts CPU and memory over every node's process tree.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.procfs import TreeSample, sample_tree

__all__ = [
    "BENCH_DIR",
    "REPO_DIR",
    "TOPOLOGIES",
    "NodeSpec",
    "RunningServer",
    "ServerSpec",
    "ServerStartError",
    "Topology",
    "bifrost_single",
    "free_port",
    "node_reference",
    "start_server",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
REFERENCE_DIR = BENCH_DIR / "reference"
LOG_DIR = BENCH_DIR / ".logs"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
VARIANT_ENV = "BENCH_BIFROST_SRC"
"""A folder holding a modified copy of the `bifrost` package to measure instead of the tree's:
how a proposed change to the service is measured without touching the service."""

# Bifröst keeps this many descriptors for itself besides sockets (bifrost/limits.py).
BIFROST_FILES_BESIDES_SOCKETS = 64


def bifrost_max_connections() -> int:
    """The open-file limit less Bifröst's own descriptors: above every scenario's socket count
    (the capacity run leaves 100), so that Bifröst's per-process cap (default 10,000) is not
    what the capacity run measures, the open-file limit is; and no start-up warning that the
    cap cannot be reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard != resource.RLIM_INFINITY else max(soft, 1_000_000)
    return max(1, limit - BIFROST_FILES_BESIDES_SOCKETS)


class ServerStartError(RuntimeError):
    """A server did not answer /info.json in time; its log file is named in the message."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One server process: how to start it and where it listens."""

    argv: tuple[str, ...]
    port: int
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path = REPO_DIR
    host: str = "127.0.0.1"
    ready_timeout_s: float = READY_TIMEOUT_S

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A server under test: one or more nodes, and pids outside them whose cost also counts."""

    key: str
    label: str
    nodes: tuple[NodeSpec, ...]
    extra_pids: tuple[int, ...] = ()
    prepare: Callable[[], None] | None = None


Topology = Callable[[Callable[[], int], str], ServerSpec]
"""Builds a ServerSpec from a free-port source and the JWT secret shared by all servers."""


@dataclass(slots=True)
class RunningServer:
    """A started ServerSpec: its processes, and the readings the runner takes of them."""

    spec: ServerSpec
    processes: list[subprocess.Popen[bytes]]
    log_paths: list[Path]

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(p.pid for p in self.processes) + self.spec.extra_pids

    @property
    def subscribe_urls(self) -> list[str]:
        return [f"ws://{n.host}:{n.port}/subscribe" for n in self.spec.nodes]

    @property
    def http_url(self) -> str:
        """Where broadcasts and /info.json go: stats are totals over all nodes by contract."""
        return self.spec.nodes[0].base_url

    def sample(self) -> TreeSample:
        return sample_tree(self.pids)

    def check_alive(self) -> None:
        for process, log in zip(self.processes, self.log_paths, strict=True):
            if process.poll() is not None:
                raise ServerStartError(
                    f"{self.spec.label} exited with {process.returncode}; see {log}"
                )

    def stop(self) -> None:
        """SIGTERM every node, then SIGKILL whatever is still there after the grace period."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)


def free_port() -> int:
    """A loopback port free right now (the kernel's pick; a race with others is unlikely here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_ready(node: NodeSpec, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + node.ready_timeout_s
    url = f"{node.base_url}/info.json"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(
                f"{' '.join(node.argv)} exited with {process.returncode}; see {log}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise ServerStartError(f"{url} did not answer within {node.ready_timeout_s:g} s; see {log}")


def start_server(spec: ServerSpec, tag: str) -> RunningServer:
    """Start every node of `spec`, logging to bench/.logs/<tag>-<n>.log, and wait until ready."""
    if spec.prepare is not None:
        spec.prepare()
    LOG_DIR.mkdir(exist_ok=True)
    running = RunningServer(spec, [], [])
    try:
        for index, node in enumerate(spec.nodes):
            log = LOG_DIR / f"{tag}-{index}.log"
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    node.argv,
                    cwd=node.cwd,
                    env={**os.environ, **node.env},
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            running.processes.append(process)
            running.log_paths.append(log)
            _wait_ready(node, process, log)
    except BaseException:
        running.stop()
        raise
    return running


def bifrost_single(next_port: Callable[[], int], secret: str) -> ServerSpec:
    """Bifröst as the README runs it: one Sanic process, in-process broker."""
    port = next_port()
    argv = (
        sys.executable,
        "-m",
        "sanic",
        "bifrost.app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--single-process",
    )
    env = {
        "JWT_SECRET": secret,
        "BIFROST_MAX_CONNECTIONS": str(bifrost_max_connections()),
        "PYTHONUNBUFFERED": "1",
    }
    variant = os.environ.get(VARIANT_ENV)
    if variant:
        # `python -m` puts the working folder first on sys.path: its `bifrost` package wins.
        node = NodeSpec(argv, port, env, cwd=Path(variant).resolve())
        return ServerSpec("bifrost", f"Bifröst ({Path(variant).name})", (node,))
    return ServerSpec("bifrost", "Bifröst", (NodeSpec(argv, port, env),))


def _npm_ci() -> None:
    """Install the reference server's locked dependencies once (`npm ci`), if missing."""
    if (REFERENCE_DIR / "node_modules" / "ws").is_dir():
        return
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        cwd=REFERENCE_DIR,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def node_reference(next_port: Callable[[], int], secret: str) -> ServerSpec:
    """The Node.js reference server (bench/reference/server.js): `ws` + `jsonwebtoken`."""
    port = next_port()
    env = {"JWT_SECRET": secret, "PORT": str(port), "HOST": "127.0.0.1"}
    node = NodeSpec(("node", "server.js"), port, env, cwd=REFERENCE_DIR)
    return ServerSpec("reference", "reference", (node,), prepare=_npm_ci)


TOPOLOGIES: dict[str, Topology] = {
    "bifrost": bifrost_single,
    "reference": node_reference,
}
"""Every topology by key; scenarios name the pair they compare (subject, baseline)."""
