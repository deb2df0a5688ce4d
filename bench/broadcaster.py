"""Sends the broadcasts of a run over keep-alive connections, as a backend application would.

Order is defined only per channel and only for a sender that waits for each answer, so the
broadcaster keeps at most one POST in flight per lane of a channel (the next sequence number
goes out once the previous one is answered) and up to `connections` in flight overall; a
channel has one lane unless the scenario asks for more. Each message carries its channel, its
lane, its sequence number in that lane and its send time, taken just before the token is
signed (a constant ~20 µs of signing is thus part of every latency, for both servers alike).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.keepalive import HttpError, KeepAliveClient
from bench.plan import BENCH_EVENT
from bench.tokens import broadcast_token

__all__ = ["BroadcastOutcome", "SteadyOutcome", "broadcast_all", "broadcast_steadily", "spread"]

MAX_ERRORS_KEPT = 8
REQUEST_TIMEOUT_S = 10.0
RETRY_PAUSE_S = 0.05
"""After every node refused a broadcast in turn, the pause before trying them again."""
GIVE_UP_S = 30.0


@dataclass(slots=True)
class BroadcastOutcome:
    """What the server answered to the run's broadcasts."""

    posted: int = 0
    deliveries: int = 0
    first_post_ns: int = 0
    last_answer_ns: int = 0
    slowest_answer_ns: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    failures: int = 0
    errors: list[str] = field(default_factory=list)

    def note(self, error: str) -> None:
        self.failures += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(error)


def _signed(secret: str, channel: str, seq: int, padding: str, lane: int = 0) -> tuple[int, str]:
    """The send time and the broadcast token of message `seq` of `channel`'s `lane`."""
    sent_ns = time.monotonic_ns()
    data = {"c": channel, "l": lane, "s": seq, "t": sent_ns, "p": padding}
    return sent_ns, broadcast_token(secret, channel, {"event": BENCH_EVENT, "data": data})


def _lanes(per_channel: dict[str, int], lanes: int) -> dict[tuple[str, int], int]:
    """How many of each channel's broadcasts each of its `lanes` sends, round-robin."""
    return {
        (channel, lane): n // lanes + (lane < n % lanes)
        for channel, n in per_channel.items()
        for lane in range(lanes)
    }


def spread(broadcasts: int, channels: list[str]) -> dict[str, int]:
    """How many of `broadcasts` each channel gets, round-robin."""
    return {
        c: broadcasts // len(channels) + (i < broadcasts % len(channels))
        for i, c in enumerate(channels)
    }


async def broadcast_all(
    http_urls: Sequence[str],
    secret: str,
    per_channel: dict[str, int],
    subscribers: dict[str, int],
    *,
    connections: int,
    padding_bytes: int,
    rate: float = 0.0,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    exact_deliveries: bool = True,
    lanes: int = 1,
) -> BroadcastOutcome:
    """POST every planned broadcast; check each answer's deliveries against `subscribers`.

    With `rate` 0, as fast as the server answers (closed loop: the next POST on a channel goes
    out when the previous one is answered). With `rate` > 0, broadcast i is not sent before
    i / rate seconds after the first (open loop, unless the server falls behind the schedule),
    so latency is measured below saturation. With `exact_deliveries` False, sockets other than
    the checked subscribers may share the channels: deliveries must then be at least theirs.
    POST i goes to `http_urls[i % len(http_urls)]`, as a round-robin load balancer in front of
    several nodes would send it: spreading connections instead would not spread POSTs, since
    with one channel (one POST in flight) the sender that got the first keeps every later one.
    With `lanes` > 1, each channel's broadcasts are split over that many lanes, each its own
    sequence with one POST in flight: several POSTs of one channel then reach the server at
    once, and order is only defined within a lane, which the clients check.
    """
    padding = "x" * padding_bytes
    per_lane = _lanes(per_channel, max(1, lanes))
    ready: deque[tuple[str, int]] = deque(key for key, n in per_lane.items() if n > 0)
    sent = dict.fromkeys(per_lane, 0)
    remaining = sum(per_channel.values())
    wake = asyncio.Event()
    outcome = BroadcastOutcome()
    taken = 0  # POSTs taken so far: POST i goes to node i mod n, and not before i / rate
    start_s = time.monotonic()

    async def sender() -> None:
        nonlocal remaining, taken
        clients = [KeepAliveClient.for_url(url) for url in http_urls]
        try:
            while remaining > 0:
                if not ready:
                    wake.clear()
                    await wake.wait()
                    continue
                channel, lane = key = ready.popleft()
                seq = sent[key]
                index, taken = taken, taken + 1
                client = clients[index % len(clients)]
                if rate > 0:
                    due_s = start_s + index / rate
                    delay_s = due_s - time.monotonic()
                    if delay_s > 0:
                        await asyncio.sleep(delay_s)
                sent_ns, token = _signed(secret, channel, seq, padding, lane)
                if outcome.first_post_ns == 0:
                    outcome.first_post_ns = sent_ns
                try:
                    status, body = await asyncio.wait_for(
                        client.post_json("/broadcast", {"token": token}), request_timeout_s
                    )
                except (
                    OSError,
                    asyncio.IncompleteReadError,
                    ValueError,
                    HttpError,
                    TimeoutError,
                ) as error:
                    status, body = 0, {"error": repr(error)}
                    await client.close()
                outcome.last_answer_ns = time.monotonic_ns()
                outcome.slowest_answer_ns = max(
                    outcome.slowest_answer_ns, outcome.last_answer_ns - sent_ns
                )
                outcome.posted += 1
                if status != 200 or not isinstance(body, dict) or body.get("message") != "Success":
                    outcome.note(f"POST /broadcast {channel}/{lane}#{seq}: {status} {body!r}")
                else:
                    got = int(body.get("deliveries", -1))
                    want = subscribers.get(channel, 0)
                    outcome.deliveries += got
                    if got < want or (exact_deliveries and got != want):
                        outcome.note(
                            f"{channel}/{lane}#{seq}: deliveries {got} for {want} subscribers"
                        )
                sent[key] = seq + 1
                remaining -= 1
                if sent[key] < per_lane[key]:
                    ready.append(key)
                wake.set()
        finally:
            wake.set()
            for client in clients:
                await client.close()

    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(sender() for _ in range(max(1, connections))))
    outcome.cpu_s, outcome.wall_s = time.process_time() - cpu0, time.monotonic() - wall0
    return outcome


@dataclass(slots=True)
class SteadyOutcome:
    """What a steady stream of broadcasts came to, through nodes stopping and starting.

    `sent` counts, per channel, the broadcasts a node accepted (200): message 0..n-1 of each
    channel, each accepted once. A broadcast is retried on the next node when one refused it
    (503 while stopping), could not be reached (connection refused) or lost the connection
    without an answer (`unanswered`: the one case where it may have gone out all the same,
    which the subscribers' and the answers' positions would then show as a duplicate).
    """

    sent: dict[str, int]
    last_positions: dict[str, Any] = field(default_factory=dict)
    deliveries: int = 0
    refused: int = 0
    unreachable: int = 0
    unanswered: int = 0
    position_faults: int = 0
    max_late_s: float = 0.0
    wall_s: float = 0.0
    failures: int = 0
    errors: list[str] = field(default_factory=list)

    def note(self, error: str) -> None:
        """A broadcast no node accepted, or one refused otherwise than 503."""
        self.failures += 1
        self.keep(error)

    def keep(self, error: str) -> None:
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(error)


async def broadcast_steadily(
    http_urls: Sequence[str],
    secret: str,
    channels: Sequence[str],
    rate: float,
    stop: asyncio.Event,
    *,
    positioned: bool = True,
    padding_bytes: int = 64,
) -> SteadyOutcome:
    """POST broadcasts at `rate` per second over `channels` in turn until `stop` is set.

    Broadcast i is due i / rate seconds after the start and goes first to node i mod n, as a
    round-robin load balancer would send it; one POST is in flight per channel (the next waits
    for its answer), so that each channel's order is defined. `positioned` (history on): each
    answer's position in its channel must be one offset past the previous answer's, in the same
    epoch.
    """
    outcome = SteadyOutcome(dict.fromkeys(channels, 0))
    padding = "x" * padding_bytes
    start_s = time.monotonic()

    async def post(clients: list[KeepAliveClient], channel: str, seq: int, first: int) -> bool:
        """Send message `seq` of `channel` until a node accepts it; False if none would."""
        deadline = time.monotonic() + GIVE_UP_S
        attempt = 0
        while time.monotonic() < deadline:
            client = clients[(first + attempt) % len(clients)]
            attempt += 1
            _, token = _signed(secret, channel, seq, padding)
            try:
                status, body = await asyncio.wait_for(
                    client.post_json("/broadcast", {"token": token}), REQUEST_TIMEOUT_S
                )
            except ConnectionRefusedError:
                outcome.unreachable += 1
                await client.close()
                status, body = 0, None
            except (OSError, asyncio.IncompleteReadError, ValueError, HttpError, TimeoutError):
                outcome.unanswered += 1
                await client.close()
                status, body = 0, None
            if status == 200 and isinstance(body, dict) and body.get("message") == "Success":
                outcome.deliveries += int(body.get("deliveries", 0))
                if positioned:
                    _check_position(outcome, channel, seq, body)
                return True
            if status == 503:
                outcome.refused += 1
            elif status:
                outcome.note(f"POST /broadcast {channel}#{seq}: {status} {body!r}")
                return False
            if attempt % len(clients) == 0:
                await asyncio.sleep(RETRY_PAUSE_S)
        outcome.note(f"{channel}#{seq}: no node accepted it within {GIVE_UP_S:g} s")
        return False

    async def sender(index: int, channel: str) -> None:
        clients = [KeepAliveClient.for_url(url) for url in http_urls]
        seq = 0
        try:
            while not stop.is_set():
                due = index + seq * len(channels)
                late_s = time.monotonic() - (start_s + due / rate)
                if late_s < 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), -late_s)
                    continue
                outcome.max_late_s = max(outcome.max_late_s, late_s)
                if not await post(clients, channel, seq, due % len(clients)):
                    return
                seq += 1
                outcome.sent[channel] = seq
        finally:
            for client in clients:
                await client.close()

    await asyncio.gather(*(sender(i, c) for i, c in enumerate(channels)))
    outcome.wall_s = time.monotonic() - start_s
    return outcome


def _check_position(outcome: SteadyOutcome, channel: str, seq: int, body: dict[str, Any]) -> None:
    """Each accepted broadcast of a channel takes the next offset of the same epoch."""
    position = (body.get("positions") or {}).get(channel)
    if position is None:
        outcome.position_faults += 1
        outcome.keep(f"{channel}#{seq}: answer without its position: {body!r}")
        return
    last = outcome.last_positions.get(channel)
    if last is not None and (
        position.get("epoch") != last.get("epoch") or position.get("offset") != last["offset"] + 1
    ):
        outcome.position_faults += 1
        outcome.keep(f"{channel}#{seq}: answered position {position} after {last}")
    outcome.last_positions[channel] = position
