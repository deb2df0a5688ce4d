"""What history costs in memory, per kept message and per channel, on both brokers.

    python -m bench.history_memory [--channels 2000] [--size 100] [--payload 200]

In-process: tracemalloc over `bifrost.rules.streams.Streams` filled with `--channels` channels
of `--size` messages of `--payload` bytes each, against the same streams holding one message
each (the cost of a channel with its epoch and bookkeeping). Redis: the same messages published
by the Redis broker with history on (its publish script) to a `redis-server` started on a free
loopback port, read with `MEMORY USAGE` of every stream and meta key. Prints the figures per
message and per channel (medians over the channels for Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tracemalloc

import orjson
import redis

from bench.servers import free_port
from bifrost.brokers.base import HistoryLimits
from bifrost.brokers.redis import RedisBroker
from bifrost.rules.registry import Totals
from bifrost.rules.streams import Streams

__all__ = ["main"]


def message(channel_index: int, n: int, payload_bytes: int) -> bytes:
    """A message's JSON of about `payload_bytes`, as a broadcast carries it."""
    data = f"{channel_index}:{n}:".ljust(payload_bytes - 30, "x")
    return orjson.dumps({"event": "note", "data": data})


def in_process(channels: int, size: int, payload_bytes: int) -> tuple[float, float]:
    """Bytes per kept message and per channel (with one message) in this process."""

    def held(messages_per_channel: int) -> int:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        streams = Streams(size, 300.0)
        for c in range(channels):
            for n in range(messages_per_channel):
                streams.append([f"room:{c}"], message(c, n, payload_bytes), 0.0)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert len(streams) == channels
        return after - before

    one, full = held(1), held(size)
    per_message = (full - one) / (channels * (size - 1))
    per_channel = one / channels - per_message
    return per_message, per_channel


async def in_redis(channels: int, size: int, payload_bytes: int) -> tuple[float, float]:
    """Bytes per kept message and per channel in Redis, by MEMORY USAGE, the messages
    published by the Redis broker itself (its publish script)."""
    port = free_port()
    redis_process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                await asyncio.sleep(0.05)
        broker = RedisBroker(
            f"redis://127.0.0.1:{port}/0",
            "bifrost:",
            deliver=lambda channels, payload, positions: 0,
            figures=lambda: Totals(0, 0, 0, 0),
            history=HistoryLimits(size, 300.0),
        )
        await broker.start()
        try:
            for n in range(size):
                await asyncio.gather(
                    *(
                        broker.publish([f"room:{c}"], message(c, n, payload_bytes))
                        for c in range(channels)
                    )
                )
                if n == 0:
                    first = usage(client, channels)
            full = usage(client, channels)
        finally:
            await broker.stop()
    finally:
        redis_process.terminate()
        redis_process.wait()
    per_message = statistics.median((f - o) / (size - 1) for f, o in zip(full, first, strict=True))
    per_channel = statistics.median(first) - per_message
    return per_message, per_channel


def usage(client: redis.Redis, channels: int) -> list[int]:
    """MEMORY USAGE of each channel's stream and meta key together."""
    totals = []
    for c in range(channels):
        keys = (f"bifrost:stream:room:{c}", f"bifrost:meta:room:{c}")
        totals.append(sum(int(client.memory_usage(k, samples=0) or 0) for k in keys))
    return totals


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=2000)
    parser.add_argument("--redis-channels", type=int, default=50)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--payload", type=int, default=200)
    args = parser.parse_args(argv)
    per_message, per_channel = in_process(args.channels, args.size, args.payload)
    print(
        f"in-process: {per_message:,.0f} B per kept message of {args.payload} B, "
        f"{per_channel:,.0f} B per channel ({args.channels} channels x {args.size})"
    )
    per_message, per_channel = asyncio.run(in_redis(args.redis_channels, args.size, args.payload))
    print(
        f"redis:      {per_message:,.0f} B per kept message of {args.payload} B, "
        f"{per_channel:,.0f} B per channel (median of {args.redis_channels} channels x {args.size})"
    )


if __name__ == "__main__":
    main()
