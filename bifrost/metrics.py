"""What an operator watches, as Prometheus metrics: the metric objects and the events they count.

Every worker is a process of its own, so with several workers the figures must be summed over
processes. prometheus-client's multiprocess mode does it: each worker writes its values to
files in `PROMETHEUS_MULTIPROC_DIR`, which the main process sets up before the workers are
spawned (they read the variable when they import this module), and a scrape, whichever worker
answers it, reads them all. The gauges count live workers only: a worker that stops is marked
dead, and its connections no longer count.

A run killed outright (SIGKILL, a crash) leaves its files behind, and their counters would be
added to the next run's: each start removes them first. A folder the main process makes is
locked for its life, so that a later start can tell an abandoned one from another instance's.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from bifrost.rules.protocol import (
    AUTHENTICATION_TIMEOUT,
    BINARY_REFUSED,
    IDLE_TIMEOUT,
    INVALID_TEXT,
    NOT_AUTHORIZED,
    RATE_LIMIT,
    SERVICE_RESTART,
    SLOW_CONSUMER,
    TRY_AGAIN_LATER,
    Close,
)
from bifrost.rules.tokens import Rejection

__all__ = [
    "CONTENT_TYPE",
    "MULTIPROC_DIR_VARIABLE",
    "MadeFolder",
    "authentication_failed",
    "broadcast_answered",
    "broadcast_delivered",
    "close_reason",
    "exposition",
    "forget_dead_processes",
    "handshake_refused",
    "http_connection_closed",
    "is_multiprocess",
    "prepare_multiprocess_dir",
    "prepared_by_main_process",
    "remove_abandoned_folders",
    "remove_multiprocess_dir",
    "sample",
    "socket_closed_by_server",
    "worker_stopped",
]

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Set by the main process for its workers: the folder is theirs and ready.
PREPARED_BY_VARIABLE = "BIFROST_METRICS_PREPARED_BY"
MADE_FOLDER_PREFIX = "bifrost-metrics-"
# A folder being made is renamed into MADE_FOLDER_PREFIX only once it is locked.
MAKING_FOLDER_PREFIX = ".bifrost-metrics-making-"
# The classic text format, which every Prometheus and compatible scraper reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# A broadcast is answered within milliseconds in-process and within a Redis round trip or two
# across nodes; the publisher waits at most 5 s for the other nodes' answers.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

CONNECTIONS = Gauge(
    "bifrost_connections",
    "Open subscriber connections: websockets and event streams.",
    multiprocess_mode="livesum",
)
EVENT_STREAMS = Gauge(
    "bifrost_event_streams",
    "Open event streams, counted in bifrost_connections too.",
    multiprocess_mode="livesum",
)
CHANNELS = Gauge(
    "bifrost_channels",
    "Channels with at least one subscriber, counted in each worker and added up.",
    multiprocess_mode="livesum",
)
SUBSCRIPTIONS = Gauge(
    "bifrost_subscriptions",
    "Socket-channel pairs.",
    multiprocess_mode="livesum",
)
BROKER_AVAILABLE = Gauge(
    "bifrost_broker_available",
    "1 when every worker's broker can carry broadcasts, 0 when one cannot (Redis lost).",
    multiprocess_mode="livemin",
)
BROADCASTS = Counter(
    "bifrost_broadcasts",
    "POST /broadcast answered, by status: 200 delivered, 400/413 refused, 503 not delivered.",
    ["status"],
)
DELIVERIES = Counter(
    "bifrost_deliveries",
    "Sockets handed a broadcast's message, as answered by POST /broadcast.",
)
BROADCAST_LATENCY = Histogram(
    "bifrost_broadcast_seconds",
    "Time from a verified broadcast token to its message handed to every subscriber.",
    buckets=LATENCY_BUCKETS,
)
AUTH_FAILURES = Counter(
    "bifrost_authentication_failures",
    "Tokens refused, by endpoint (subscribe, broadcast) and reason.",
    ["endpoint", "reason"],
)
SOCKETS_CLOSED = Counter(
    "bifrost_sockets_closed",
    "Websockets and event streams closed by the server, by reason.",
    ["reason"],
)
HANDSHAKES_REFUSED = Counter(
    "bifrost_handshakes_refused",
    "Websocket handshakes and event-stream requests refused, by reason (origin, full, stopping).",
    ["reason"],
)
HTTP_CONNECTIONS_CLOSED = Counter(
    "bifrost_http_connections_closed",
    "Connections closed before they became websockets, by reason: request_timeout (no"
    " complete request in time), overflow (opened past the connection limit and its headroom).",
    ["reason"],
)

CLOSE_REASONS: dict[Close, str] = {
    IDLE_TIMEOUT: "idle",
    AUTHENTICATION_TIMEOUT: "auth_timeout",
    SLOW_CONSUMER: "slow_consumer",
    RATE_LIMIT: "rate_limit",
    NOT_AUTHORIZED: "not_authorized",
    BINARY_REFUSED: "binary_frame",
    INVALID_TEXT: "invalid_text",
    SERVICE_RESTART: "shutdown",
    TRY_AGAIN_LATER: "broker_unconfirmed",
}


def close_reason(close: Close) -> str:
    """The label of a server close: idle, auth_timeout, slow_consumer, rate_limit, ..."""
    return CLOSE_REASONS.get(close, "other")


def socket_closed_by_server(close: Close) -> None:
    SOCKETS_CLOSED.labels(close_reason(close)).inc()


def authentication_failed(endpoint: str, kind: Rejection) -> None:
    """Count a refused token by the kind of its rejection, a few fixed values."""
    AUTH_FAILURES.labels(endpoint, kind.value).inc()


def handshake_refused(reason: str) -> None:
    HANDSHAKES_REFUSED.labels(reason).inc()


def http_connection_closed(reason: str) -> None:
    HTTP_CONNECTIONS_CLOSED.labels(reason).inc()


def broadcast_answered(status: int) -> None:
    """Count a broadcast answered with an error status."""
    BROADCASTS.labels(str(status)).inc()


def broadcast_delivered(deliveries: int, seconds: float) -> None:
    BROADCASTS.labels("200").inc()
    DELIVERIES.inc(deliveries)
    BROADCAST_LATENCY.observe(seconds)


def sample(
    connected: int, event_streams: int, channels: int, subscriptions: int, broker_available: bool
) -> None:
    """Set this worker's gauges to its figures now."""
    CONNECTIONS.set(connected)
    EVENT_STREAMS.set(event_streams)
    CHANNELS.set(channels)
    SUBSCRIPTIONS.set(subscriptions)
    BROKER_AVAILABLE.set(1 if broker_available else 0)


def is_multiprocess() -> bool:
    """Whether this process's metrics live in the shared folder (decided at import)."""
    # prometheus-client says so nowhere public: its value class is picked once, at its import.
    return values.ValueClass is not values.MutexValue


def exposition() -> bytes:
    """The metrics in the Prometheus text format: every worker's, when there are several."""
    if not is_multiprocess():
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    # prometheus-client leaves its multiprocess module unannotated.
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


@dataclass(frozen=True, slots=True)
class MadeFolder:
    """A folder the main process made, and the descriptor that holds its lock while it runs."""

    path: str
    lock: int


def prepare_multiprocess_dir() -> MadeFolder | None:
    """In the main process, before workers exist: the folder they will write their metrics to.

    An operator's own `PROMETHEUS_MULTIPROC_DIR` is emptied of a previous run's files and kept;
    otherwise the folders of earlier runs that were killed are removed, and a locked temporary
    folder is made, to be removed when the main process stops.
    """
    os.environ[PREPARED_BY_VARIABLE] = str(os.getpid())
    given = os.environ.get(MULTIPROC_DIR_VARIABLE)
    if given:
        os.makedirs(given, exist_ok=True)
        for stale in glob.glob(os.path.join(given, "*.db")):
            os.remove(stale)
        return None
    parent = tempfile.gettempdir()
    remove_abandoned_folders(parent)
    made = _make_locked_folder(parent)
    os.environ[MULTIPROC_DIR_VARIABLE] = made.path
    return made


def prepared_by_main_process() -> bool:
    """Whether a main process prepared the folder: not so in a single process."""
    return PREPARED_BY_VARIABLE in os.environ


def _make_locked_folder(parent: str) -> MadeFolder:
    making = tempfile.mkdtemp(prefix=MAKING_FOLDER_PREFIX, dir=parent)
    lock = os.open(making, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    path = os.path.join(parent, MADE_FOLDER_PREFIX + making.rpartition(MAKING_FOLDER_PREFIX)[2])
    os.rename(making, path)
    return MadeFolder(path, lock)


def remove_abandoned_folders(parent: str) -> None:
    """Remove the folders that main processes killed outright left in `parent`.

    A folder is abandoned when nobody holds its lock and none of its files is of a running
    process; a folder of another user, or of a live instance, is left alone.
    """
    for path in glob.glob(os.path.join(parent, MADE_FOLDER_PREFIX + "*")):
        with _unlocked(path) as abandoned:
            if abandoned and not any(_is_running(pid) for pid in _writers(path)):
                shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _unlocked(path: str) -> Iterator[bool]:
    """Whether the folder is ours and nobody holds its lock; held by us meanwhile."""
    try:
        lock = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield False
        return
    try:
        if os.fstat(lock).st_uid != os.getuid():
            yield False
            return
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(lock)


def forget_dead_processes() -> None:
    """In a single process: remove the files that earlier runs' processes left in the folder.

    No main process emptied it, and only this process writes to it now.
    """
    folder = os.environ[MULTIPROC_DIR_VARIABLE]
    for path in glob.glob(os.path.join(folder, "*.db")):
        pid = _writer(path)
        if pid is not None and not _is_running(pid):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def _writers(folder: str) -> set[int]:
    found = (_writer(path) for path in glob.glob(os.path.join(folder, "*.db")))
    return {pid for pid in found if pid is not None}


def _writer(path: str) -> int | None:
    """The process a metrics file belongs to, from its name (`counter_123.db`).

    prometheus-client documents no naming of its files; tests/test_dependency_pins.py pins it.
    """
    tail = os.path.basename(path).removesuffix(".db").rpartition("_")[2]
    return int(tail) if tail.isdigit() else None


def _is_running(pid: int) -> bool:
    """Whether the process exists and is not a zombie (killed, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):  # no /proc here, or gone meanwhile
        return True


def remove_multiprocess_dir(made: MadeFolder | None) -> None:
    """When the main process stops: remove the folder it made, and let go of its lock."""
    os.environ.pop(PREPARED_BY_VARIABLE, None)
    if made:
        shutil.rmtree(made.path, ignore_errors=True)
        os.close(made.lock)
        if os.environ.get(MULTIPROC_DIR_VARIABLE) == made.path:
            del os.environ[MULTIPROC_DIR_VARIABLE]


def worker_stopped() -> None:
    """A worker's last word: its gauges stop counting (its counters keep their totals)."""
    if is_multiprocess():
        # prometheus-client leaves its multiprocess module unannotated.
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
