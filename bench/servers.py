"""The servers under test, described as data: each node is a command, an environment and a port.

A topology is a function from free ports and the shared secret to a `ServerSpec`: one Bifröst
process, the Node reference, or two Bifröst nodes sharing a Redis that the topology starts as
a service of its own. The runner spreads subscribers over every node's URL, sends broadcasts
to the nodes in turn, and accounts CPU and memory over every node's and service's process.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.procfs import TreeSample, reset_tree_peak, sample_tree, tree_peak_rss
from bifrost.limits import FILES_BESIDES_SOCKETS
from bifrost.rules.admission import REFUSAL_HEADROOM

__all__ = [
    "BENCH_DIR",
    "REPO_DIR",
    "TOPOLOGIES",
    "NodeSpec",
    "RunningServer",
    "ServerSpec",
    "ServerStartError",
    "ServiceSpec",
    "Topology",
    "bifrost_history",
    "bifrost_redis_pair",
    "bifrost_single",
    "free_port",
    "node_reference",
    "restart_node",
    "start_server",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
REFERENCE_DIR = BENCH_DIR / "reference"
LOG_DIR = BENCH_DIR / ".logs"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
REDIS_SERVER = "redis-server"
VARIANT_ENV = "BENCH_BIFROST_SRC"
"""A folder holding a modified copy of the `bifrost` package to measure instead of the tree's:
how a proposed change to the service is measured without touching the service."""

BIFROST_FILES_PAST_CAP = REFUSAL_HEADROOM + FILES_BESIDES_SOCKETS
"""Descriptors Bifröst wants past its connection cap (bifrost/limits.py): connections it holds
to answer them 503, and its own files; with fewer it warns at start."""
HISTORY_SIZE = 100
"""BIFROST_HISTORY_SIZE of the history topology: messages kept per channel."""


def bifrost_max_connections() -> int:
    """The open-file limit less what Bifröst wants past its cap: above every scenario's
    connections (the capacity runs leave `CAPACITY_HEADROOM`), so that Bifröst's per-process
    cap (default 10,000) is not what the capacity runs measure, the open-file limit is; and no
    start-up warning that the cap cannot be reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard != resource.RLIM_INFINITY else max(soft, 1_000_000)
    return max(1, limit - BIFROST_FILES_PAST_CAP)


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
class ServiceSpec:
    """A process the nodes depend on (a Redis): started before them, stopped after them, and
    part of the server's bill, since a deployment runs it too."""

    argv: tuple[str, ...]
    port: int
    host: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A server under test: one or more nodes, the services they use, and pids outside them
    whose cost also counts."""

    key: str
    label: str
    nodes: tuple[NodeSpec, ...]
    extra_pids: tuple[int, ...] = ()
    prepare: Callable[[], None] | None = None
    services: tuple[ServiceSpec, ...] = ()
    positioned: bool = False
    """Its subscribers opt in to positions (`since` in authenticate), and every frame they get
    must carry them: a server with history on, measured as its users would use it."""


Topology = Callable[[Callable[[], int], str], ServerSpec]
"""Builds a ServerSpec from a free-port source and the JWT secret shared by all servers."""


@dataclass(slots=True)
class RunningServer:
    """A started ServerSpec: its processes, and the readings the runner takes of them."""

    spec: ServerSpec
    processes: list[subprocess.Popen[bytes]]
    log_paths: list[Path]
    service_processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pids(self) -> tuple[int, ...]:
        started = self.processes + self.service_processes
        return tuple(p.pid for p in started) + self.spec.extra_pids

    @property
    def subscribe_urls(self) -> list[str]:
        return [f"ws://{n.host}:{n.port}/subscribe" for n in self.spec.nodes]

    @property
    def http_url(self) -> str:
        """Where /info.json is read: one node's figures are totals over all nodes by contract,
        so summing every node's would count each socket and frame once per node."""
        return self.spec.nodes[0].base_url

    @property
    def broadcast_urls(self) -> list[str]:
        """Every node, as a load balancer in front of them would spread the application's POSTs."""
        return [n.base_url for n in self.spec.nodes]

    def sample(self) -> TreeSample:
        return sample_tree(self.pids)

    def reset_peak_rss(self) -> None:
        reset_tree_peak(self.pids)

    def peak_rss_bytes(self) -> int:
        """The tree's peak RSS since `reset_peak_rss` (or since start)."""
        return tree_peak_rss(self.pids)

    def check_alive(self) -> None:
        for process, log in zip(self.processes, self.log_paths, strict=True):
            if process.poll() is not None:
                raise ServerStartError(
                    f"{self.spec.label} exited with {process.returncode}; see {log}"
                )
        for service in self.service_processes:
            if service.poll() is not None:
                raise ServerStartError(f"{service.args[0]} exited with {service.returncode}")

    def stop(self) -> None:
        """Stop every node, then the services they use, which the nodes still talk to while
        they close their sockets."""
        _terminate(self.processes)
        _terminate(self.service_processes)


def _terminate(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each, then SIGKILL whatever is still there after the grace period."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in processes:
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


def _wait_listening(service: ServiceSpec, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(f"{' '.join(service.argv)} exited with {process.returncode}")
        try:
            socket.create_connection((service.host, service.port), timeout=1.0).close()
            return
        except OSError:
            time.sleep(0.05)
    raise ServerStartError(f"{service.argv[0]} did not listen on {service.port} in time")


def start_server(spec: ServerSpec, tag: str) -> RunningServer:
    """Start the services of `spec`, then every node, logging to bench/.logs/<tag>-<n>.log, and
    wait until ready."""
    if spec.prepare is not None:
        spec.prepare()
    LOG_DIR.mkdir(exist_ok=True)
    running = RunningServer(spec, [], [])
    try:
        for service in spec.services:
            process = subprocess.Popen(
                service.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            running.service_processes.append(process)
            _wait_listening(service, process)
        for index, node in enumerate(spec.nodes):
            log = LOG_DIR / f"{tag}-{index}.log"
            process = _launch(node, log)
            running.processes.append(process)
            running.log_paths.append(log)
            _wait_ready(node, process, log)
    except BaseException:
        running.stop()
        raise
    return running


def _launch(node: NodeSpec, log: Path, mode: str = "wb") -> subprocess.Popen[bytes]:
    with log.open(mode) as sink:
        return subprocess.Popen(
            node.argv,
            cwd=node.cwd,
            env={**os.environ, **node.env},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def restart_node(running: RunningServer, index: int) -> None:
    """Start node `index` of a running server again, once its process has exited (a rolling
    restart), on the same port, its log appended to; wait until it is ready."""
    node, log = running.spec.nodes[index], running.log_paths[index]
    if running.processes[index].poll() is None:
        raise RuntimeError(f"node {index} of {running.spec.label} is still running")
    process = _launch(node, log, "ab")
    running.processes[index] = process
    _wait_ready(node, process, log)


def _bifrost_node(port: int, secret: str, extra_env: Mapping[str, str]) -> NodeSpec:
    """One `--single-process` Bifröst, from the tree or from the variant folder if one is set."""
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
        **extra_env,
    }
    variant = os.environ.get(VARIANT_ENV)
    if variant:
        # `python -m` puts the working folder first on sys.path: its `bifrost` package wins.
        return NodeSpec(argv, port, env, cwd=Path(variant).resolve())
    return NodeSpec(argv, port, env)


def _bifrost_label(label: str) -> str:
    variant = os.environ.get(VARIANT_ENV)
    return f"{label} ({Path(variant).name})" if variant else label


def bifrost_single(next_port: Callable[[], int], secret: str) -> ServerSpec:
    """Bifröst as the README runs it: one Sanic process, in-process broker."""
    node = _bifrost_node(next_port(), secret, {})
    return ServerSpec("bifrost", _bifrost_label("Bifröst"), (node,))


def bifrost_history(next_port: Callable[[], int], secret: str) -> ServerSpec:
    """One Bifröst process keeping `HISTORY_SIZE` messages per channel, its subscribers
    positioned: what recovery costs on the path of every frame."""
    env = {"BIFROST_HISTORY_SIZE": str(HISTORY_SIZE)}
    node = _bifrost_node(next_port(), secret, env)
    label = _bifrost_label("Bifröst, history on")
    return ServerSpec("bifrost-history", label, (node,), positioned=True)


def _need_redis_server() -> None:
    """Fail with the reason, rather than Popen's bare FileNotFoundError, if Redis is missing."""
    if shutil.which(REDIS_SERVER) is None:
        raise ServerStartError(f"{REDIS_SERVER} is not on the PATH (apt-get install redis-server)")


def bifrost_redis_pair(next_port: Callable[[], int], secret: str) -> ServerSpec:
    """Two Bifröst nodes sharing a Redis of their own: the smallest cluster, on one machine.

    Half the subscribers and half the broadcasts land on each node, so half the frames cross
    Redis to reach the other node; Redis's CPU counts as the server's.
    """
    redis_port = next_port()
    argv = (REDIS_SERVER, "--port", str(redis_port), "--bind", "127.0.0.1")
    redis = ServiceSpec((*argv, "--save", "", "--appendonly", "no"), redis_port)
    env = {"BIFROST_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
    nodes = (_bifrost_node(next_port(), secret, env), _bifrost_node(next_port(), secret, env))
    label = _bifrost_label("Bifröst, 2 nodes + Redis")
    return ServerSpec("bifrost-redis", label, nodes, prepare=_need_redis_server, services=(redis,))


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
    "bifrost-history": bifrost_history,
    "bifrost-redis": bifrost_redis_pair,
    "reference": node_reference,
}
"""Every topology by key; scenarios name the pair they compare (subject, baseline)."""
