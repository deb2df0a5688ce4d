"""`GET /metrics`: what an operator watches, counted where it happens and summed over workers."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import signal
import time
from pathlib import Path

import httpx
import jwt
import pytest
from prometheus_client import REGISTRY
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bifrost import metrics
from bifrost.rules import protocol
from bifrost.rules.admission import REFUSAL_HEADROOM
from bifrost.rules.settings import Settings
from bifrost.rules.tokens import Rejection, TokenRejected, TokenVerifier
from tests.clients import authenticated, post_broadcast
from tests.live import SECRET, BifrostServer, broadcast_token, subscribe_token

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

METRICS_ENV = {
    "BIFROST_AUTH_TIMEOUT": "0.5",
    "BIFROST_MAX_MESSAGE_BYTES": "1024",
    "BIFROST_ALLOWED_ORIGINS": "https://app.example.com",
}


def scrape(server: BifrostServer) -> Samples:
    """Every sample of `/metrics`, by name and labels."""
    response = httpx.get(f"{server.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 for a labelled counter that has not counted yet."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def eventually(
    server: BifrostServer, name: str, expected: float, timeout: float = 5.0
) -> None:
    """Wait until a sample reaches its expected value (gauges are sampled once a second)."""
    deadline = time.monotonic() + timeout
    while (seen := value(scrape(server), name)) != expected:
        assert time.monotonic() < deadline, f"{name} is {seen}, not {expected}"
        await asyncio.sleep(0.1)


async def closed(ws) -> tuple[int | None, str | None]:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    return ws.close_code, ws.close_reason


# -- labels: a few fixed values --------------------------------------------------------


def rejection(verify, token: object) -> TokenRejected:
    with pytest.raises(TokenRejected) as caught:
        verify(token)
    return caught.value


def test_token_refusals_map_to_a_few_fixed_reasons():
    """Each way a token is refused counts under the label its rejection's kind names."""
    verifier = TokenVerifier.from_settings(Settings(jwt_secret=SECRET))
    subscribe, order = verifier.subscribe_channels, verifier.broadcast_order
    now = int(time.time())
    cases = {
        "signature": [subscribe_token(["a"], secret="w" * 64)],
        "expired": [subscribe_token(["a"], exp=now - 60)],
        "not_yet_valid": [subscribe_token(["a"], nbf=now + 600)],
        "algorithm": [
            jwt.encode({"channels": ["a"]}, SECRET, "HS256"),
            jwt.encode({"channels": ["a"]}, None, "none"),
        ],
        "malformed": ["not a token", "", 42, None, "a.b.c"],
        "claims": [
            subscribe_token([]),
            jwt.encode({"sub": "x"}, SECRET, "HS512"),
            broadcast_token({"event": "e"}, channel="a"),
        ],
    }
    for label, tokens in cases.items():
        for token in tokens:
            refused = rejection(subscribe, token)
            assert counted_as(refused) == label, refused
    refused = rejection(order, broadcast_token({"event": "e"}, channel="a", ttl=None))
    assert counted_as(refused) == "claims", refused


def counted_as(refused: TokenRejected) -> str:
    """The label `metrics.authentication_failed` counts a rejection under."""
    before = unit_failures()
    metrics.authentication_failed("unit", refused.kind)
    after = unit_failures()
    (counted,) = [label for label, count in after.items() if count != before[label]]
    return counted


def unit_failures() -> dict[str, float]:
    """The failures counted for the endpoint `unit`, by every label a rejection may carry."""
    return {
        kind.value: REGISTRY.get_sample_value(
            "bifrost_authentication_failures_total", {"endpoint": "unit", "reason": kind.value}
        )
        or 0.0
        for kind in Rejection
    }


def test_every_server_close_has_its_own_reason_label():
    """Every close the protocol defines has a distinct label, none of them `other`."""
    closes = [v for v in vars(protocol).values() if isinstance(v, protocol.Close)]
    labels = [metrics.close_reason(close) for close in closes]
    assert len(closes) >= 7
    assert "other" not in labels
    assert len(set(labels)) == len(labels)


# -- one process ----------------------------------------------------------------------


@pytest.fixture
def live(start_server) -> BifrostServer:
    return start_server(METRICS_ENV, name="metrics")


async def test_gauges_count_connections_channels_and_subscriptions(live):
    """Connections, channels and subscriptions are gauges that follow sockets coming and going."""
    sockets = [await authenticated(live, ["room", f"own:{n}"]) for n in range(3)]
    samples = scrape(live)
    assert value(samples, "bifrost_connections") == 3
    assert value(samples, "bifrost_channels") == 4
    assert value(samples, "bifrost_subscriptions") == 6
    assert value(samples, "bifrost_broker_available") == 1
    for ws in sockets:
        await ws.close()
    await eventually(live, "bifrost_connections", 0)
    assert value(scrape(live), "bifrost_channels") == 0


async def test_broadcasts_deliveries_and_latency_are_counted(live):
    """Each answered broadcast counts by status; deliveries add up; latency is observed."""
    sockets = [await authenticated(live, ["news"]) for _ in range(2)]
    for n in range(3):
        token = broadcast_token({"event": "n", "data": n}, channel="news")
        assert (await post_broadcast(live, token)).json()["deliveries"] == 2
    bad = broadcast_token({"event": "n"}, channel="news", secret="w" * 64)
    assert (await post_broadcast(live, bad)).status_code == 400
    big = broadcast_token({"event": "n", "data": "x" * 2000}, channel="news")
    assert (await post_broadcast(live, big)).status_code == 413
    samples = scrape(live)
    assert value(samples, "bifrost_broadcasts_total", status="200") == 3
    assert value(samples, "bifrost_broadcasts_total", status="400") == 1
    assert value(samples, "bifrost_broadcasts_total", status="413") == 1
    assert value(samples, "bifrost_deliveries_total") == 6
    assert value(samples, "bifrost_broadcast_seconds_count") == 3
    assert value(samples, "bifrost_broadcast_seconds_bucket", le="+Inf") == 3
    assert (
        value(
            samples,
            "bifrost_authentication_failures_total",
            endpoint="broadcast",
            reason="signature",
        )
        == 1
    )
    for ws in sockets:
        await ws.close()


async def test_authentication_failures_are_counted_by_reason(live):
    """A refused subscribe token counts under its reason, and its socket as not authorized."""
    for token in (
        subscribe_token(["a"], secret="w" * 64),
        "garbage",
        subscribe_token(["a"], exp=1),
    ):
        async with connect(live.ws_url) as ws:
            await ws.send(json.dumps({"event": "authenticate", "data": token}))
            assert await closed(ws) == (1008, "Not Authorized")
    samples = scrape(live)
    failures = "bifrost_authentication_failures_total"
    for reason in ("signature", "malformed", "expired"):
        assert value(samples, failures, endpoint="subscribe", reason=reason) == 1
    assert value(samples, "bifrost_sockets_closed_total", reason="not_authorized") == 3


async def test_sockets_closed_by_the_server_are_counted_by_reason(live):
    """Sockets the server closes count by reason: auth timeout and binary frames here."""
    async with connect(live.ws_url) as silent:
        assert await closed(silent) == (1008, "Authentication timeout")
    async with connect(live.ws_url) as binary:
        await binary.send(b"\x00\x01")
        assert (await closed(binary))[0] == 1003
    samples = scrape(live)
    assert value(samples, "bifrost_sockets_closed_total", reason="auth_timeout") == 1
    assert value(samples, "bifrost_sockets_closed_total", reason="binary_frame") == 1


async def test_refused_handshakes_are_counted(live):
    """A handshake from a foreign origin is counted as refused, by reason."""
    with pytest.raises(InvalidStatus):
        async with connect(live.ws_url, origin="https://evil.example.com"):
            pass
    assert value(scrape(live), "bifrost_handshakes_refused_total", reason="origin") == 1


async def test_connections_closed_before_upgrading_are_counted_by_reason(start_server):
    """Connections cut for no request in time count as request_timeout, those closed past the
    connection limit and its headroom as overflow."""
    live = start_server({**METRICS_ENV, "BIFROST_MAX_CONNECTIONS": "5"}, name="metrics")
    held = 5 + REFUSAL_HEADROOM
    silent = [await asyncio.open_connection("127.0.0.1", live.port) for _ in range(held + 1)]
    for reader, writer in silent:
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    samples = scrape(live)
    closed_early = "bifrost_http_connections_closed_total"
    counted = {
        reason: value(samples, closed_early, reason=reason)
        for reason in ("request_timeout", "overflow")
    }
    assert counted == {"request_timeout": held, "overflow": 1}


# -- several workers ------------------------------------------------------------------


def worker_connections(shared: Path) -> list[float]:
    """The connections each live worker wrote to the shared folder, read as the collector does."""
    held = []
    for path in glob.glob(f"{shared}/gauge_livesum_*.db"):
        values = MmapedDict(path, read_mode=True)
        try:
            held += [v for key, v, _ in values.read_all_values() if '"bifrost_connections"' in key]
        finally:
            values.close()
    return held


async def test_two_workers_report_the_sum_of_both(start_server, redis_server, tmp_path):
    """With two workers, every scrape, whichever worker answers, reports both workers' figures.

    The operator's PROMETHEUS_MULTIPROC_DIR is used, emptied of an earlier run's files, and
    a stopped worker's gauges are removed from it while its counters stay.
    """
    shared = tmp_path / "prometheus"
    shared.mkdir()
    (shared / "counter_1.db").write_bytes(b"stale")
    live = start_server(
        {"BIFROST_REDIS_URL": redis_server.url, "PROMETHEUS_MULTIPROC_DIR": str(shared)},
        args=("--workers", "2"),
        name="metrics-workers",
    )
    assert not (shared / "counter_1.db").exists()
    sockets = [await authenticated(live, ["all", f"own:{n}"]) for n in range(20)]
    for n in range(10):
        token = broadcast_token({"event": "n", "data": n}, channel="all")
        assert (await post_broadcast(live, token)).json()["deliveries"] == 20
    await eventually(live, "bifrost_connections", 20)
    held = worker_connections(shared)
    assert len(held) == 2 and all(held), f"each worker holds some sockets: {held}"
    for _ in range(10):
        samples = scrape(live)
        assert value(samples, "bifrost_connections") == 20
        assert value(samples, "bifrost_subscriptions") == 40
        assert value(samples, "bifrost_broadcasts_total", status="200") == 10
        assert value(samples, "bifrost_deliveries_total") == 200
        assert value(samples, "bifrost_broadcast_seconds_count") == 10
    for ws in sockets:
        await ws.close()
    live.stop()
    assert glob.glob(f"{shared}/gauge_livesum_*") == []
    assert len(glob.glob(f"{shared}/counter_*.db")) == 2


async def test_workers_share_a_temporary_folder_removed_at_exit(
    start_server, redis_server, tmp_path
):
    """Without PROMETHEUS_MULTIPROC_DIR the main process makes a folder, and removes it at exit."""
    # A temporary folder of the test's own, so that other servers' folders are not counted.
    live = start_server(
        {
            "BIFROST_REDIS_URL": redis_server.url,
            "PROMETHEUS_MULTIPROC_DIR": None,
            "TMPDIR": str(tmp_path),
        },
        args=("--workers", "2"),
        name="metrics-tmp",
    )
    made = set(glob.glob(f"{tmp_path}/bifrost-metrics-*"))
    assert len(made) == 1
    ws = await authenticated(live, ["one"])
    await eventually(live, "bifrost_connections", 1)
    await ws.close()
    live.stop()
    assert not any(os.path.exists(folder) for folder in made)


def kill_outright(live: BifrostServer) -> None:
    """SIGKILL every process of the server: nothing of it runs its shutdown."""
    assert live.process is not None
    os.killpg(live.process.pid, signal.SIGKILL)
    live.process.wait()
    deadline = time.monotonic() + 5
    while live.group_processes():
        assert time.monotonic() < deadline, "the killed processes are still running"
        time.sleep(0.05)


async def broadcast_to_one_socket(live: BifrostServer, times: int) -> None:
    ws = await authenticated(live, ["counted"])
    for n in range(times):
        token = broadcast_token({"event": "n", "data": n}, channel="counted")
        assert (await post_broadcast(live, token)).json()["deliveries"] == 1
    await ws.close()


@pytest.mark.parametrize(
    "launch",
    [{"entry_point": True}, {"args": ()}],
    ids=["python-m-bifrost", "sanic-worker"],
)
async def test_counters_of_a_killed_run_are_not_added_to_the_next(start_server, tmp_path, launch):
    """A run killed with SIGKILL leaves its files in PROMETHEUS_MULTIPROC_DIR; the next run on
    that folder counts from zero."""
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    killed = start_server(env, name="metrics-killed", **launch)
    await broadcast_to_one_socket(killed, 3)
    assert value(scrape(killed), "bifrost_broadcasts_total", status="200") == 3
    kill_outright(killed)
    assert glob.glob(f"{shared}/counter_*.db"), "the killed run left its counters"
    live = start_server(env, name="metrics-after-kill", **launch)
    await broadcast_to_one_socket(live, 1)
    samples = scrape(live)
    assert value(samples, "bifrost_broadcasts_total", status="200") == 1
    assert value(samples, "bifrost_deliveries_total") == 1


async def test_a_killed_main_process_folder_is_removed_at_the_next_start(start_server, tmp_path):
    """The temporary folder of a main process killed with SIGKILL is removed by the next start,
    which counts from zero; the folder of an instance still running is left alone."""
    env = {"PROMETHEUS_MULTIPROC_DIR": None, "TMPDIR": str(tmp_path)}
    killed = start_server(env, args=(), name="metrics-tmp-killed")
    await broadcast_to_one_socket(killed, 3)
    [abandoned] = glob.glob(f"{tmp_path}/bifrost-metrics-*")
    kill_outright(killed)
    running = start_server(env, args=(), name="metrics-tmp-running")
    assert not os.path.exists(abandoned)
    [in_use] = glob.glob(f"{tmp_path}/bifrost-metrics-*")
    await broadcast_to_one_socket(running, 1)
    start_server(env, args=(), name="metrics-tmp-beside")
    assert os.path.isdir(in_use)
    assert len(glob.glob(f"{tmp_path}/bifrost-metrics-*")) == 2
    samples = scrape(running)
    assert value(samples, "bifrost_broadcasts_total", status="200") == 1
    assert value(samples, "bifrost_deliveries_total") == 1
