"""Redis as the broker between workers and nodes: per-channel pub/sub with exact counts.

Each process subscribes in Redis only to the channels its own sockets hear, so a node never
receives traffic for channels nobody on it listens to. A broadcast is published once on each
channel it names; every node that receives a copy answers the publisher on its reply channel
with how many sockets it handed the message to (a node that got the same broadcast through
several channels delivers it once and answers the other copies with zero). PUBLISH tells how
many copies went out, so the publisher knows how many answers to wait for: `deliveries` is
exact across nodes, and bounded in time when a node dies mid-way.

Figures for `/info.json` come from a heartbeat hash per node that expires, so a node that
dies without saying goodbye stops counting within a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as redis
from redis.exceptions import RedisError

from bifrost.broker import Broker, BrokerUnavailable, Totals
from bifrost.protocol import text_frame
from bifrost.registry import ChannelRegistry

__all__ = ["HEARTBEAT_TTL", "RedisBroker"]

logger = logging.getLogger("bifrost.redis")

COMMAND_TIMEOUT = 2.0
REPLY_TIMEOUT = 5.0
SUBSCRIBE_TIMEOUT = 2.0
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_TTL = 3
RECONNECT_BACKOFF = (0.1, 0.2, 0.5, 1.0, 2.0)
REMEMBERED_BROADCASTS = 10_000


class _PendingBroadcast:
    """The answers a publisher waits for: how many are due, and the deliveries they report."""

    __slots__ = ("answered", "deliveries", "done", "expected")

    def __init__(self) -> None:
        self.expected: int | None = None
        self.answered = 0
        self.deliveries = 0
        self.done = asyncio.get_running_loop().create_future()

    def answer(self, deliveries: int) -> None:
        self.answered += 1
        self.deliveries += deliveries
        self._settle()

    def expect(self, copies: int) -> None:
        self.expected = copies
        self._settle()

    def _settle(self) -> None:
        if self.expected is not None and self.answered >= self.expected and not self.done.done():
            self.done.set_result(None)


class RedisBroker(Broker):
    """Carries broadcasts through Redis pub/sub and sums the figures of every node."""

    def __init__(self, url: str, prefix: str, registry: ChannelRegistry[Any]) -> None:
        self._url = url
        self._prefix = prefix
        self._registry = registry
        self._node = uuid.uuid4().hex
        self._reply_key = f"{prefix}reply:{self._node}".encode()
        self._commands = redis.Redis.from_url(
            url, socket_timeout=COMMAND_TIMEOUT, socket_connect_timeout=COMMAND_TIMEOUT
        )
        self._listener: redis.Redis | None = None
        self._pubsub: redis.client.PubSub | None = None
        self._unavailable: str | None = "connecting to Redis"
        self._pending: dict[str, _PendingBroadcast] = {}
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        connected = asyncio.get_running_loop().create_future()
        self._tasks = [
            asyncio.create_task(self._listen_forever(connected)),
            asyncio.create_task(self._heartbeat_forever()),
        ]
        # Start serving even with Redis down: readiness says so, and reconnection goes on.
        try:
            await asyncio.wait_for(asyncio.shield(connected), COMMAND_TIMEOUT)
        except TimeoutError:
            logger.warning("Redis not reachable at start-up; retrying in the background")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Said goodbye: this node stops counting at once (otherwise its heartbeat expires).
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self._commands.delete(self._node_key()), COMMAND_TIMEOUT)
        await self._close_pubsub()
        await self._commands.aclose()

    def unavailable_reason(self) -> str | None:
        return self._unavailable

    async def channel_occupied(self, channel: str) -> None:
        """Subscribe, and wait until Redis confirms, so a broadcast sent next is not missed."""
        key = self._channel_key(channel)
        if self._pubsub is None or self._unavailable:
            return  # resubscribed from the registry once Redis is back
        confirmed = asyncio.get_running_loop().create_future()
        self._confirmations[key] = confirmed
        try:
            await self._pubsub.subscribe(key)
            await asyncio.wait_for(confirmed, SUBSCRIBE_TIMEOUT)
        except (RedisError, OSError, TimeoutError) as error:
            logger.warning("subscribing to %r in Redis failed: %s", channel, error)
        finally:
            self._confirmations.pop(key, None)

    async def channel_vacated(self, channel: str) -> None:
        if self._pubsub is None or self._unavailable or self._registry.is_occupied(channel):
            return
        try:
            await self._pubsub.unsubscribe(self._channel_key(channel))
        except (RedisError, OSError) as error:
            logger.warning("unsubscribing from %r in Redis failed: %s", channel, error)

    async def publish(self, channels: Sequence[str], payload: bytes) -> int:
        if self._unavailable:
            raise BrokerUnavailable(self._unavailable)
        broadcast_id = uuid.uuid4().hex
        header = orjson.dumps({"id": broadcast_id, "reply": self._node, "channels": channels})
        envelope = header + b"\n" + payload
        pending = self._pending[broadcast_id] = _PendingBroadcast()
        try:
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    pipe = self._commands.pipeline(transaction=False)
                    for channel in channels:
                        pipe.publish(self._channel_key(channel), envelope)
                    copies = sum(await pipe.execute())
            except (RedisError, OSError, TimeoutError) as error:
                raise BrokerUnavailable(f"Redis did not take the message ({error})") from None
            pending.expect(copies)
            try:
                await asyncio.wait_for(pending.done, REPLY_TIMEOUT)
            except TimeoutError:
                logger.warning(
                    "broadcast %s: %d of %d nodes answered within %g s",
                    broadcast_id,
                    pending.answered,
                    copies,
                    REPLY_TIMEOUT,
                )
            return pending.deliveries
        finally:
            del self._pending[broadcast_id]

    async def totals(self) -> Totals:
        """The local figures, plus every other node's latest heartbeat."""
        local = self._local_figures()
        figures = [local]
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                keys = [k async for k in self._commands.scan_iter(match=self._node_key("*"))]
                others = [k for k in keys if k != self._node_key().encode()]
                if others:
                    pipe = self._commands.pipeline(transaction=False)
                    for key in others:
                        pipe.hgetall(key)
                    for values in await pipe.execute():
                        if values:
                            figures.append({k.decode(): int(v) for k, v in values.items()})
        except (RedisError, OSError, TimeoutError) as error:
            logger.warning("figures of other nodes unavailable: %s", error)
        return Totals(**{name: sum(f[name] for f in figures) for name in local})

    # -- the reader: one pub/sub connection, reconnected with backoff --------------------

    async def _listen_forever(self, connected: asyncio.Future[None]) -> None:
        attempt = 0
        while True:
            try:
                await self._connect_pubsub()
                if self._unavailable and attempt:
                    logger.warning("Redis is back; resubscribed to %d channels", self._count())
                self._unavailable = None
                attempt = 0
                if not connected.done():
                    connected.set_result(None)
                await self._read_messages()
            except (RedisError, OSError, TimeoutError) as error:
                if self._unavailable is None:
                    logger.error("lost Redis: %s", error)
                self._unavailable = f"Redis unreachable: {error}"
                self._fail_pending()
            delay = RECONNECT_BACKOFF[min(attempt, len(RECONNECT_BACKOFF) - 1)]
            attempt += 1
            await asyncio.sleep(delay)

    async def _connect_pubsub(self) -> None:
        await self._close_pubsub()
        self._listener = redis.Redis.from_url(
            self._url, socket_connect_timeout=COMMAND_TIMEOUT, health_check_interval=5
        )
        self._pubsub = self._listener.pubsub()
        keys = [self._channel_key(c) for c in self._registry.occupied_channels()]
        await self._pubsub.subscribe(self._reply_key, *keys)

    async def _close_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
                if self._listener is not None:
                    await self._listener.aclose()
            self._pubsub = None

    def _count(self) -> int:
        return len(self._registry.occupied_channels())

    async def _read_messages(self) -> None:
        assert self._pubsub is not None
        while True:
            message = await self._pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            kind, key, data = message["type"], message["channel"], message["data"]
            if kind == "subscribe":
                confirmed = self._confirmations.get(key)
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)
            elif kind == "message" and key == self._reply_key:
                self._take_answer(data)
            elif kind == "message":
                await self._deliver(data)

    async def _deliver(self, envelope: bytes) -> None:
        header, payload = envelope.split(b"\n", 1)
        broadcast = orjson.loads(header)
        broadcast_id: str = broadcast["id"]
        delivered = 0
        if broadcast_id not in self._seen:
            self._remember(broadcast_id)
            delivered = self._registry.deliver(broadcast["channels"], text_frame(payload))
        reply_key = f"{self._prefix}reply:{broadcast['reply']}"
        await self._commands.publish(reply_key, f"{broadcast_id} {delivered}")

    def _take_answer(self, data: bytes) -> None:
        broadcast_id, delivered = data.decode().split()
        pending = self._pending.get(broadcast_id)
        if pending is not None:
            pending.answer(int(delivered))

    def _remember(self, broadcast_id: str) -> None:
        self._seen[broadcast_id] = None
        if len(self._seen) > REMEMBERED_BROADCASTS:
            self._seen.popitem(last=False)

    def _fail_pending(self) -> None:
        """Broadcasts waiting for answers settle with what they have: Redis will not bring more."""
        for pending in self._pending.values():
            if not pending.done.done():
                pending.done.set_result(None)

    # -- the heartbeat: this node's figures, expiring if the node dies -------------------

    async def _heartbeat_forever(self) -> None:
        while True:
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    pipe = self._commands.pipeline(transaction=False)
                    pipe.hset(self._node_key(), mapping=self._local_figures())
                    pipe.expire(self._node_key(), HEARTBEAT_TTL)
                    await pipe.execute()
            except (RedisError, OSError, TimeoutError):
                pass  # the reader reports Redis being lost
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    def _local_figures(self) -> dict[str, int]:
        registry = self._registry
        return {
            "connected": registry.connected,
            "deliveries": registry.deliveries,
            "channels": registry.channel_count,
            "subscriptions": registry.subscription_count,
        }

    def _channel_key(self, channel: str) -> bytes:
        return f"{self._prefix}channel:{channel}".encode()

    def _node_key(self, node: str | None = None) -> str:
        return f"{self._prefix}node:{node or self._node}"
