"""Redis as the broker between workers and nodes: per-channel pub/sub with exact counts.

Each process (a node: one worker of one machine) subscribes in Redis only to the channels its
own sockets hear, so it never receives traffic for channels nobody on it listens to. A
broadcast is one envelope (id, channels, publisher, message) published on each channel it
names. Every node that receives a copy answers the publisher with how many sockets it handed
the message to; a node that gets the same broadcast through several channels delivers it once
and answers the other copies with zero. PUBLISH says how many copies went out, so the publisher
knows how many answers to wait for: `deliveries` is exact across nodes, and bounded in time
when a node stops answering.

With history on, a broadcast is one server-side script instead (`bifrost.brokers.redis_scripts`)
that gives it its offsets, keeps it in each channel's stream and publishes it, and a
recovering socket's streams are read by another that ends with a barrier on this node's reply
channel: the snapshot is used once the barrier has come back, when every live message
published before it has been handed to `deliver`.

Figures for `/info.json` come from a heartbeat hash per node that expires, so a node that dies
without saying goodbye stops counting within `HEARTBEAT_TTL` seconds.

This module is the I/O: connections, tasks, timeouts and reconnection. What the bytes
exchanged mean (envelopes, answers, copies already seen, the sum of the figures) is decided in
`bifrost.rules.relay`, and which subscriptions Redis still owes in
`bifrost.rules.subscription_book`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from time import monotonic
from typing import Any, cast

import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from bifrost.brokers.base import (
    Broker,
    BrokerUnavailable,
    Deliver,
    Figures,
    HistoryLimits,
    Published,
    Totals,
)
from bifrost.brokers.redis_scripts import PUBLISH_SCRIPT, SNAPSHOT_SCRIPT
from bifrost.rules.history import ChannelSnapshot
from bifrost.rules.positions import MessagePositions, Position, new_epoch
from bifrost.rules.relay import (
    Envelope,
    PendingBroadcast,
    RedisNames,
    SeenBroadcasts,
    cluster_totals,
    decode_answer,
    decode_envelope,
    decode_positions,
    decode_snapshot,
    encode_answer,
    encode_envelope,
    envelope_head,
    heartbeat,
    other_nodes,
)
from bifrost.rules.subscription_book import SubscriptionBook

__all__ = ["HEARTBEAT_INTERVAL", "HEARTBEAT_TTL", "REPLY_TIMEOUT", "RedisBroker"]

logger = logging.getLogger("bifrost.redis")

# A command that takes longer means Redis is unreachable: a broadcast is refused with 503,
# and a socket whose channels Redis has not confirmed by then is closed with 1013.
COMMAND_TIMEOUT = 2.0
# Connections for commands (publishes, snapshots, subscriptions) of one node; more in flight
# wait, within COMMAND_TIMEOUT, for one of them.
COMMAND_CONNECTIONS = 64
# How long a publisher waits for the answers of the nodes that received its broadcast.
REPLY_TIMEOUT = 5.0
# The listener pings its connection this often, and gives it up after this many in a row
# go unanswered: a Redis that is unreachable without closing the connection.
PING_INTERVAL = 1.0
UNANSWERED_PINGS = 3
# Each node renews its figures this often; they expire this long after the last renewal.
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_TTL = 3
# The set naming every node outlives its members, and vanishes once a deployment is gone.
NODES_TTL = 60
RECONNECT_BACKOFF = (0.1, 0.2, 0.5, 1.0)
# Channels read by one snapshot script call at most: the snapshots asked together share calls
# of this size, short enough not to hold Redis up for other clients.
SNAPSHOT_BATCH = 512
# Snapshot reads out at once. Snapshots asked while this many are out wait, and go together in
# one call when one comes back: in a reconnect storm the sockets authenticate one or two per
# loop turn, and a call per turn was nearly a call per socket. Each read is bounded by
# COMMAND_TIMEOUT, so a Redis that stops answering fails a waiting snapshot within twice that.
SNAPSHOT_READS_IN_FLIGHT = 2
# What the reply channel carries to mark where a snapshot's read was, beside answers.
BARRIER_PREFIX = b"barrier "
# How long a stop waits for a cancelled task before it cancels it again.
CANCEL_RETRY_INTERVAL = 0.1

REDIS_FAILURES = (RedisError, OSError, TimeoutError)
CONNECTING = "connecting to Redis"


class RedisBroker(Broker):
    """Carries broadcasts through Redis pub/sub and sums the figures of every node.

    `deliver` is this process's fan-out and `figures` its own counts (see `bifrost.brokers.base`).
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        deliver: Deliver,
        figures: Figures,
        history: HistoryLimits | None = None,
        interrupted: Callable[[], object] | None = None,
    ) -> None:
        self._names = RedisNames(prefix)
        self._history = history
        # Called when live delivery to this node stops: what is published until the listener
        # is back never reaches its sockets, and positioned ones can recover it elsewhere.
        self._interrupted = interrupted
        self._deliver = deliver
        self._figures = figures
        self._node = uuid.uuid4().hex
        self._reply_channel = self._names.reply(self._node)
        self._node_key = self._names.node(self._node)
        self._nodes_key = self._names.nodes
        # The broker reconnects itself, with backoff; redis-py must not retry behind its back
        # (a retried PUBLISH could go out twice, a silently resubscribed listener miss copies).
        options: dict[str, Any] = {
            "socket_timeout": COMMAND_TIMEOUT,
            "socket_connect_timeout": COMMAND_TIMEOUT,
        }
        # redis-py's default pool fails a command at once past its connections ("Too many
        # connections"): in a reconnect storm, hundreds of snapshots in flight closed their
        # sockets with 1013. A blocking pool makes a command wait for a free connection.
        self._commands = redis.Redis.from_pool(
            redis.BlockingConnectionPool.from_url(
                url,
                max_connections=COMMAND_CONNECTIONS,
                timeout=COMMAND_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
                **options,
            )
        )
        self._listening = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)
        self._publish_script = self._commands.register_script(PUBLISH_SCRIPT)
        self._snapshot_script = self._commands.register_script(SNAPSHOT_SCRIPT)
        # Per snapshot awaiting its barrier on the reply channel, the end of its wait.
        self._barriers: dict[bytes, asyncio.Future[None]] = {}
        # Snapshots asked and not yet read, the reads in flight, and whether a read of what is
        # asked is due at the end of this loop turn.
        self._asked: list[SnapshotAsk] = []
        self._reads: set[asyncio.Task[None]] = set()
        self._read_due = False
        # Per channel, the subscriptions asked of Redis and the answers owed; commands for the
        # pub/sub connection wait in its outbox, sent in order by the task that owns it.
        self._book: SubscriptionBook[asyncio.Future[None]] = SubscriptionBook(self._new_waiter)
        self._outbox: asyncio.Queue[tuple[str, list[bytes]]] | None = None
        self._unavailable: str | None = CONNECTING
        self._last_error: Exception | None = None
        self._ready: asyncio.Future[None] | None = None
        # Per broadcast of this node awaiting answers, its count and the end of its wait.
        self._pending: dict[str, tuple[PendingBroadcast, asyncio.Future[None]]] = {}
        self._seen = SeenBroadcasts()
        self._answers: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()
        self._answerer: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Set once `stop` begins: the loops end at their next turn, whatever became of the
        # cancellation that should have ended them.
        self._stopping = False

    async def start(self) -> None:
        """Connect, but serve even while Redis is down: readiness says so, reconnection goes on."""
        self._ready = asyncio.get_running_loop().create_future()
        self._answerer = asyncio.create_task(self._answer_forever(), name="bifrost-redis-answers")
        self._tasks = [
            asyncio.create_task(self._listen_forever(), name="bifrost-redis-listener"),
            asyncio.create_task(self._heartbeat_forever(), name="bifrost-redis-heartbeat"),
        ]
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), COMMAND_TIMEOUT)
        except TimeoutError:
            why = self._last_error or "no answer"
            logger.warning("Redis not reachable at start-up (%s); retrying", why)

    async def stop(self) -> None:
        """Let broadcasts in flight hear their answers, then say goodbye to the other nodes."""
        in_flight = [done for _, done in self._pending.values() if not done.done()]
        if in_flight:
            await asyncio.wait(in_flight, timeout=REPLY_TIMEOUT)
        self._stopping = True
        await _cancelled([*self._tasks, *self._reads])
        if self._answerer is not None:
            # Answers already owed go out, so that no publisher waits for them in vain.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answers.join(), COMMAND_TIMEOUT)
            await _cancelled([self._answerer])
        # This node stops counting at once, rather than when its heartbeat expires.
        with contextlib.suppress(*REDIS_FAILURES):
            async with asyncio.timeout(COMMAND_TIMEOUT):
                pipe = self._commands.pipeline(transaction=True)
                pipe.delete(self._node_key)
                pipe.srem(self._nodes_key, self._node)
                await pipe.execute()
        for client in (self._commands, self._listening):
            with contextlib.suppress(*REDIS_FAILURES):
                await client.aclose()

    def unavailable_reason(self) -> str | None:
        return self._unavailable

    def channels_occupied(self, channels: Sequence[str]) -> None:
        """Subscribe to the channels in one command; `wait_subscribed` waits for its answer."""
        keys = self._book.occupy(self._names.channel(c) for c in channels)
        self._send("SUBSCRIBE", keys)

    def channels_vacated(self, channels: Sequence[str]) -> None:
        keys, abandoned = self._book.vacate(self._names.channel(c) for c in channels)
        self._send("UNSUBSCRIBE", keys)
        for waiter in abandoned:
            waiter.cancel()

    async def wait_subscribed(self, channels: Sequence[str]) -> None:
        """Wait until Redis confirms every channel, so that a broadcast sent next is heard."""
        waiters = self._book.waiters(self._names.channel(c) for c in channels)
        if not waiters:
            return
        done, late = await asyncio.wait(set(waiters), timeout=COMMAND_TIMEOUT)
        if late or any(waiter.cancelled() for waiter in done):
            why = self._unavailable or f"no answer within {COMMAND_TIMEOUT:g} s"
            raise BrokerUnavailable(f"Redis did not confirm the subscription: {why}")

    def _send(self, command: str, keys: list[bytes]) -> None:
        if keys and self._outbox is not None:
            self._outbox.put_nowait((command, keys))

    def _new_waiter(self) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    async def publish(self, channels: Sequence[str], payload: bytes) -> Published:
        if self._unavailable:
            raise BrokerUnavailable(self._unavailable)
        envelope = Envelope(uuid.uuid4().hex, self._node, list(channels), payload)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending = PendingBroadcast(on_settled=partial(done.set_result, None))
        self._pending[envelope.id] = (pending, done)
        try:
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    copies, positions = await self._send_broadcast(envelope)
            except REDIS_FAILURES as error:
                logger.warning("Redis did not take broadcast %s: %s", envelope.id, _failure(error))
                raise BrokerUnavailable("Redis did not take the message") from None
            pending.expect(copies)
            try:
                await asyncio.wait_for(asyncio.shield(done), REPLY_TIMEOUT)
            except TimeoutError:
                logger.warning(
                    "broadcast %s: %d of %d copies answered within %g s",
                    envelope.id,
                    pending.answered,
                    copies,
                    REPLY_TIMEOUT,
                )
            if pending.lost and not pending.complete:
                if not pending.answered:
                    raise BrokerUnavailable("Redis was lost before any node confirmed delivery")
                logger.warning(
                    "broadcast %s: Redis lost after %d of %d answers; %d deliveries at least",
                    envelope.id,
                    pending.answered,
                    copies,
                    pending.deliveries,
                )
            return Published(pending.deliveries, positions)
        finally:
            del self._pending[envelope.id]

    async def _send_broadcast(self, envelope: Envelope) -> tuple[int, MessagePositions | None]:
        """PUBLISH the envelope on each channel, or with history on run the script that also
        keeps it; return the copies that went out, and the positions the script gave it."""
        names = self._names
        if self._history is None:
            data = encode_envelope(envelope)
            pipe = self._commands.pipeline(transaction=False)
            for channel in envelope.channels:
                pipe.publish(names.channel(channel), data)
            return sum(await pipe.execute()), None
        channels = envelope.channels
        keys = names.history_keys(channels)
        head = envelope_head(envelope.id, envelope.reply, channels)
        args: list[bytes | str | int] = [
            self._history.size,
            _milliseconds(self._history.ttl),
            head,
            envelope.payload,
            *(new_epoch() for _ in channels),
            *(names.channel(c) for c in channels),
        ]
        copies, line = await self._publish_script(keys=keys, args=args)
        return copies, decode_positions(channels, line)

    async def snapshot(
        self, channels: Sequence[str], since: Mapping[str, Position]
    ) -> dict[str, ChannelSnapshot]:
        """Read the streams, with the other snapshots asked meanwhile, in one script call;
        the reply is used once its barrier has come back through the pub/sub connection,
        behind every live message published before the read.

        A reconnect storm asks thousands at once: a call shared by all those asked in the same
        loop turn, or while earlier reads were out, spares each its own connection checkout,
        round trip and barrier. Asked alone, a snapshot is read at the end of the turn.
        """
        if self._history is None:
            raise RuntimeError("history is off: there are no streams to read")
        if self._unavailable:
            raise BrokerUnavailable(self._unavailable)
        answer: asyncio.Future[dict[str, ChannelSnapshot]] = (
            asyncio.get_running_loop().create_future()
        )
        self._asked.append(SnapshotAsk(channels, since, answer))
        self._read_soon()
        return await answer

    def _read_soon(self) -> None:
        """Read what is asked at the end of this turn, unless SNAPSHOT_READS_IN_FLIGHT reads
        are out: then the first of them to come back reads it."""
        if self._read_due or len(self._reads) >= SNAPSHOT_READS_IN_FLIGHT:
            return
        self._read_due = True
        asyncio.get_running_loop().call_soon(self._read_asked)

    def _read_asked(self) -> None:
        """Read the snapshots asked so far, in script calls of at most SNAPSHOT_BATCH channels
        each; once the broker stops, tell them it cannot."""
        self._read_due = False
        asked, self._asked = self._asked, []
        if self._stopping:
            for ask in asked:
                if not ask.answer.done():  # else its socket went meanwhile
                    ask.answer.set_exception(BrokerUnavailable("the broker is stopping"))
            return
        batch: list[SnapshotAsk] = []
        size = 0
        for ask in asked:
            if batch and size + len(ask.channels) > SNAPSHOT_BATCH:
                self._start_read(batch)
                batch, size = [], 0
            batch.append(ask)
            size += len(ask.channels)
        self._start_read(batch)

    def _start_read(self, batch: list[SnapshotAsk]) -> None:
        read = asyncio.create_task(self._read_snapshots(batch), name="bifrost-redis-snapshot")
        self._reads.add(read)
        read.add_done_callback(self._read_done)

    def _read_done(self, read: asyncio.Task[None]) -> None:
        """A read is back (or cancelled): what was asked meanwhile goes next."""
        self._reads.discard(read)
        if self._asked:
            self._read_soon()

    async def _read_snapshots(self, batch: list[SnapshotAsk]) -> None:
        """One script call for the batch, answered once its barrier is back; every ask of
        the batch hears BrokerUnavailable if Redis does not answer within the bound."""
        assert self._history is not None, "asked only with history on"
        names = self._names
        barrier = BARRIER_PREFIX + uuid.uuid4().hex.encode()
        arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._barriers[barrier] = arrived
        args: list[bytes | str | int] = [
            self._history.size,
            _milliseconds(self._history.ttl),
            self._reply_channel,
            barrier,
        ]
        keys: list[bytes] = []
        for ask in batch:
            for channel in ask.channels:
                position = ask.since.get(channel)
                epoch, offset = (position.epoch, position.offset) if position else ("", 0)
                args += [new_epoch(), epoch, offset]
            keys += names.history_keys(ask.channels)
        channels = sum(len(ask.channels) for ask in batch)
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                replies = iter(await self._snapshot_script(keys=keys, args=args))
                await arrived
            answers = [
                {channel: decode_snapshot(channel, next(replies)) for channel in ask.channels}
                for ask in batch
            ]
            for ask, snapshot in zip(batch, answers, strict=True):
                if not ask.answer.done():  # else its socket went meanwhile
                    ask.answer.set_result(snapshot)
        except (*REDIS_FAILURES, ValueError, StopIteration) as error:
            logger.warning("history of %d channels not read: %s", channels, _failure(error))
        finally:
            del self._barriers[barrier]
            # Not read (Redis failed, or the broker stops): no recovering socket waits on.
            for ask in batch:
                if not ask.answer.done():
                    ask.answer.set_exception(
                        BrokerUnavailable("Redis did not answer with the history")
                    )

    async def totals(self) -> Totals:
        """This node's live figures, plus every other node's latest heartbeat."""
        heartbeats: list[dict[bytes, bytes]] = []
        if self._unavailable is None:
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    heartbeats = await self._other_nodes_heartbeats()
            except REDIS_FAILURES as error:
                logger.warning("figures of the other nodes unavailable: %s", _failure(error))
        return cluster_totals(self._figures(), heartbeats)

    async def _other_nodes_heartbeats(self) -> list[dict[bytes, bytes]]:
        """The heartbeat of every other node that has not expired; forget the rest."""
        members = cast("set[bytes]", await self._commands.smembers(self._nodes_key))
        nodes = other_nodes(members, self._node)
        if not nodes:
            return []
        pipe = self._commands.pipeline(transaction=False)
        for node in nodes:
            pipe.hgetall(self._names.node(node))
        heartbeats: list[dict[bytes, bytes]] = await pipe.execute()
        gone = [node for node, values in zip(nodes, heartbeats, strict=True) if not values]
        if gone:
            await self._commands.srem(self._nodes_key, *gone)
        return [values for values in heartbeats if values]

    # -- the listener: one pub/sub connection, reconnected with backoff ---------------------

    async def _listen_forever(self) -> None:
        """Hold the pub/sub connection; after a loss, reconnect and resubscribe every channel."""
        attempt = 0
        while not self._stopping:
            pubsub = self._listening.pubsub()
            try:
                await pubsub.subscribe(self._reply_channel)
                # From here channels occupied and vacated go to this connection's outbox; the
                # channels wanted until now are subscribed in the same step, so none falls
                # between the two.
                outbox = self._outbox = asyncio.Queue()
                keys = self._book.connect()
                if keys:
                    await pubsub.subscribe(*keys)
                # Its pong comes after every subscription above: then the broker is available.
                await pubsub.ping()
                await _until_one_fails(self._read(pubsub), self._write(pubsub, outbox))
            except REDIS_FAILURES as error:
                if self._unavailable is None:
                    attempt = 0
                self._lost("Redis unreachable", error)
            except Exception:
                logger.exception("the Redis listener failed; reconnecting")
                self._lost("the Redis listener failed", None)
            finally:
                self._outbox = None
                self._book.lost()
                with contextlib.suppress(*REDIS_FAILURES):
                    # redis-py before 8.2 leaves PubSub.aclose unannotated; 8.2 annotates it.
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            if self._unavailable is not None:
                # Pooled connections to the Redis that went away would each fail once more.
                with contextlib.suppress(*REDIS_FAILURES):
                    await self._commands.connection_pool.disconnect()
            await asyncio.sleep(_backoff(attempt))
            attempt += 1

    async def _read(self, pubsub: PubSub) -> None:
        """Take every message; ping, and give the connection up when pings go unanswered.

        Unanswered pings are counted rather than seconds of silence, so that a process that
        was paused (SIGSTOP, a stalled host) reads what Redis sent meanwhile instead of
        dropping it.
        """
        unanswered = 0
        last_ping = monotonic()
        while True:
            message = await pubsub.get_message(timeout=PING_INTERVAL)
            if message is not None:
                unanswered = 0
                self._take(message)
            if monotonic() - last_ping >= PING_INTERVAL:
                if unanswered >= UNANSWERED_PINGS:
                    raise RedisConnectionError(f"{unanswered} pings to Redis unanswered")
                await pubsub.ping()
                unanswered += 1
                last_ping = monotonic()

    async def _write(self, pubsub: PubSub, outbox: asyncio.Queue[tuple[str, list[bytes]]]) -> None:
        """Send the connection's SUBSCRIBE and UNSUBSCRIBE commands in the order they were
        asked for: the book matches Redis's answers to them in that order. A failure here ends
        the connection, and with it every answer the book expected."""
        while True:
            command, keys = await outbox.get()
            if command == "SUBSCRIBE":
                await pubsub.subscribe(*keys)
            else:
                await pubsub.unsubscribe(*keys)

    def _take(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message" and message["channel"] == self._reply_channel:
            data = message["data"]
            barrier = self._barriers.get(data)
            if barrier is not None:
                if not barrier.done():
                    barrier.set_result(None)
            elif not data.startswith(BARRIER_PREFIX):
                self._take_answer(data)
            # else the barrier of a read that gave up waiting for it
        elif kind == "message":
            self._take_broadcast(message["channel"], message["data"])
        elif kind in ("subscribe", "unsubscribe"):
            waiter = self._book.answered(message["channel"], kind == "subscribe")
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif kind == "pong" and self._unavailable is not None:
            self._available()

    def _take_broadcast(self, channel: bytes, data: bytes) -> None:
        """Deliver a broadcast the first time one of its copies arrives; answer every copy."""
        try:
            envelope = decode_envelope(data)
        except ValueError as error:
            logger.warning("ignored a message on %r: %s", channel, error)
            return
        delivered = 0
        if self._seen.first_copy(envelope.id):
            delivered = self._deliver(envelope.channels, envelope.payload, envelope.positions)
        if envelope.reply == self._node:
            self._count_answer(envelope.id, delivered)
        else:
            answer = encode_answer(envelope.id, delivered)
            self._answers.put_nowait((self._names.reply(envelope.reply), answer))

    def _take_answer(self, data: bytes) -> None:
        try:
            broadcast_id, delivered = decode_answer(data)
        except ValueError:
            logger.warning("ignored a malformed answer: %r", data[:100])
            return
        self._count_answer(broadcast_id, delivered)

    def _count_answer(self, broadcast_id: str, delivered: int) -> None:
        entry = self._pending.get(broadcast_id)
        if entry is not None:  # else the publisher stopped waiting
            entry[0].answer(delivered)

    def _available(self) -> None:
        if self._unavailable != CONNECTING:
            logger.warning("Redis is back; resubscribed to %d channels", self._figures().channels)
        self._unavailable = None
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def _lost(self, reason: str, error: Exception | None) -> None:
        """Refuse broadcasts from now on; the reason is public (`/readyz`), the error is logged."""
        self._last_error = error
        was_available = self._unavailable is None
        if was_available:
            logger.error("lost Redis: %s", error or reason)
        self._unavailable = reason
        if was_available and self._interrupted is not None:
            self._interrupted()
        for pending, _ in self._pending.values():
            pending.give_up()

    # -- the answers to other publishers, batched into one round trip ---------------------

    async def _answer_forever(self) -> None:
        """Send the answers queued by the listener, so that it never waits on a round trip."""
        while not self._stopping:
            batch = [await self._answers.get()]
            while not self._answers.empty():
                batch.append(self._answers.get_nowait())
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    pipe = self._commands.pipeline(transaction=False)
                    for reply_channel, answer in batch:
                        pipe.publish(reply_channel, answer)
                    await pipe.execute()
            except REDIS_FAILURES as error:
                logger.warning("%d answers to publishers lost: %s", len(batch), _failure(error))
            for _ in batch:
                self._answers.task_done()

    # -- the heartbeat: this node's figures, expiring if the node dies --------------------

    async def _heartbeat_forever(self) -> None:
        while not self._stopping:
            with contextlib.suppress(*REDIS_FAILURES):  # the listener reports Redis lost
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    pipe = self._commands.pipeline(transaction=True)
                    figures: dict[Any, Any] = heartbeat(self._figures())
                    pipe.hset(self._node_key, mapping=figures)
                    pipe.expire(self._node_key, HEARTBEAT_TTL)
                    pipe.sadd(self._nodes_key, self._node)
                    pipe.expire(self._nodes_key, NODES_TTL)
                    await pipe.execute()
            await asyncio.sleep(HEARTBEAT_INTERVAL)


@dataclass(frozen=True, slots=True)
class SnapshotAsk:
    """A recovering socket's channels and positions, and where its snapshot is answered."""

    channels: Sequence[str]
    since: Mapping[str, Position]
    answer: asyncio.Future[dict[str, ChannelSnapshot]]


async def _until_one_fails(*loops: Coroutine[Any, Any, None]) -> None:
    """Run endless loops side by side until one raises; stop the others, raise its error."""
    tasks = [asyncio.create_task(loop) for loop in loops]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _cancelled(tasks)
    for task in done:
        task.result()


async def _cancelled(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the tasks and wait for them to end, cancelling again those that go on.

    On Python 3.11, redis-py sends a command inside `asyncio.wait_for`, which can lose a
    cancellation that arrives as the command completes: the task then goes on, and a stop that
    waited for it would never end (a node that ignored SIGTERM until it was killed). A task
    still running after `COMMAND_TIMEOUT` is left, and logged.
    """
    pending = {task for task in tasks if not task.done()}
    deadline = asyncio.get_running_loop().time() + COMMAND_TIMEOUT
    while pending and asyncio.get_running_loop().time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_RETRY_INTERVAL)
    if pending:
        logger.warning("stopping: %d Redis tasks did not end", len(pending))


def _failure(error: Exception) -> str:
    """What a failed command logs: its message, or its kind when it has none (a command over
    its time bound raises a TimeoutError that says nothing)."""
    return str(error) or type(error).__name__


def _milliseconds(seconds: float) -> int:
    """A TTL as Redis's PEXPIRE takes it: whole milliseconds, at least one."""
    return max(1, round(seconds * 1000))


def _backoff(attempt: int) -> float:
    """The pause before reconnection attempt `attempt`, jittered so nodes do not stampede."""
    delay = RECONNECT_BACKOFF[min(attempt, len(RECONNECT_BACKOFF) - 1)]
    return delay * random.uniform(0.8, 1.2)
