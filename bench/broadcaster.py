"""Sends the broadcasts of a run over keep-alive connections, as a backend application would.

Order is defined only per channel and only for a sender that waits for each answer, so the
broadcaster keeps at most one POST in flight per channel (the next sequence number goes out
once the previous one is answered) and up to `connections` in flight overall. Each message
carries its channel, its sequence number and its send time, taken just before the token is
signed (a constant ~20 µs of signing is thus part of every latency, for both servers alike).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.keepalive import HttpError, KeepAliveClient
from bench.plan import BENCH_EVENT
from bench.tokens import broadcast_token

__all__ = ["BroadcastOutcome", "broadcast_all", "spread"]

MAX_ERRORS_KEPT = 8
REQUEST_TIMEOUT_S = 10.0


@dataclass(slots=True)
class BroadcastOutcome:
    """What the server answered to the run's broadcasts."""

    posted: int = 0
    deliveries: int = 0
    first_post_ns: int = 0
    last_answer_ns: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    failures: int = 0
    errors: list[str] = field(default_factory=list)

    def note(self, error: str) -> None:
        self.failures += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(error)


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

    With `lanes` > 1, each channel's broadcasts are split over that many lanes, each with its
    own sequence (`l` in the message), and one POST per lane is in flight: order is only defined
    within a lane, which the clients check.
    """
    padding = "x" * padding_bytes
    lanes = max(1, lanes)
    per_lane = {
        (c, lane): n // lanes + (1 if lane < n % lanes else 0)
        for c, n in per_channel.items()
        for lane in range(lanes)
    }
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
                sent_ns = time.monotonic_ns()
                message = {
                    "event": BENCH_EVENT,
                    "data": {"c": channel, "l": lane, "s": seq, "t": sent_ns, "p": padding},
                }
                token = broadcast_token(secret, channel, message)
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
                outcome.posted += 1
                if status != 200 or not isinstance(body, dict) or body.get("message") != "Success":
                    outcome.note(f"POST /broadcast {channel}#{seq}: {status} {body!r}")
                else:
                    got = int(body.get("deliveries", -1))
                    want = subscribers.get(channel, 0)
                    outcome.deliveries += got
                    if got < want or (exact_deliveries and got != want):
                        outcome.note(f"{channel}#{seq}: deliveries {got} for {want} subscribers")
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
