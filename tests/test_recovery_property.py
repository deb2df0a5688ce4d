"""Recovery, generated: random broadcasts, disconnects and reconnects against live servers.

Whatever the interleaving, a socket that keeps its `since` by the client rule
(`Object.assign(since, frame.positions)`) and sends it again on every reconnect ends up with
every message of each of its channels once, in the channel's order, at offsets 1..N of one
epoch: on one node with the in-process broker, and on two nodes through one Redis with the
sockets reconnecting to either, with broadcasts racing the recoveries.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.live import BifrostServer, broadcast_token, subscribe_token
from tests.redis_server import RedisServer

# Large enough that no example evicts anything: every reconnect must be recovered.
HISTORY_ENV = {"BIFROST_HISTORY_SIZE": "1000"}
# Three channels, each socket hearing two of them, so that every two sockets share one.
HEARD = ((0, 1), (1, 2), (0, 2))
# A broadcast goes to one channel or to two of them.
TARGETS = ((0,), (1,), (2,), (0, 1), (1, 2), (0, 2))
SETTLE_TIMEOUT = 5.0
PROPERTY_SETTINGS = settings(max_examples=120, deadline=None)
# A `recovered` key the frame does not have.
ABSENT = "absent"


@dataclass(frozen=True)
class Broadcast:
    """POST a message to one or two channels through a node."""

    targets: tuple[int, ...]
    node: int


@dataclass(frozen=True)
class Disconnect:
    """A socket goes away: with a closing handshake, or its network lost (`abrupt`)."""

    socket: int
    abrupt: bool


@dataclass(frozen=True)
class Reconnect:
    """A socket connects again to a node with its `since`; `racing` broadcasts are fired
    unanswered just before its authenticate, `pause` seconds before it, and its new
    connection is lost again after `cut_after` frames when that is given."""

    socket: int
    node: int
    racing: tuple[Broadcast, ...]
    pause: float
    cut_after: int | None


broadcasts = st.builds(Broadcast, st.sampled_from(TARGETS), st.integers(0, 1))
sockets = st.integers(0, len(HEARD) - 1)
steps = st.lists(
    st.one_of(
        broadcasts,
        st.builds(Disconnect, sockets, st.booleans()),
        st.builds(
            Reconnect,
            sockets,
            st.integers(0, 1),
            st.lists(broadcasts, max_size=3).map(tuple),
            st.sampled_from([0.0, 0.001, 0.005]),
            st.none() | st.integers(1, 5),
        ),
    ),
    min_size=1,
    max_size=14,
)


@dataclass
class Sent:
    """A broadcast as its sender knows it: `batch` grows each time the sender has waited for
    answers, so a broadcast of a later batch was sent after those of earlier ones were done."""

    seq: int
    channels: tuple[str, ...]
    batch: int
    racing: bool
    positions: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Subscribed:
    """A `subscribed` frame, with the position its connection's `since` gave for the channel."""

    connection: int
    channel: str
    positions: Any
    recovered: Any
    asked: Any


class Socket:
    """A browser's socket that follows the client rule: every frame's positions go into
    `since`, sent again on each reconnect; every frame it takes is recorded."""

    def __init__(self, channels: Sequence[str]) -> None:
        self.channels = list(channels)
        self.since: dict[str, Any] = {}
        # (connection, seq, positions) of each message frame, in the order they came.
        self.messages: list[tuple[int, Any, Any]] = []
        self.opened: list[int] = []  # per connection, the broadcasts sent before it opened
        self.cuts = 0  # connections lost after `cut_after` frames
        self.subscribed: list[Subscribed] = []
        self.unexpected: list[Any] = []
        self.pongs = 0
        self.connections = 0
        self._asked: dict[str, Any] = {}
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(
        self,
        url: str,
        sent: int,
        cut_after: int | None = None,
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Open a new connection, `sent` broadcasts having been sent, and authenticate with
        `since`; `before` runs just before the authenticate."""
        await self.disconnect(abrupt=False)
        ws = await connect(url)
        self.connections += 1
        self.opened.append(sent)
        if before is not None:
            await before()
        self._asked = dict(self.since)
        token = subscribe_token(self.channels)
        await ws.send(json.dumps({"event": "authenticate", "data": token, "since": self._asked}))
        self._ws = ws
        self._reader = asyncio.create_task(self._read(ws, self.connections, cut_after))

    async def disconnect(self, abrupt: bool) -> None:
        """Close the connection; frames taken until then count, the others are lost."""
        ws, reader = self._ws, self._reader
        if ws is None or reader is None:
            return
        self._ws = self._reader = None
        if abrupt:
            ws.transport.abort()
        else:
            await ws.close()
        await reader

    async def ping(self) -> None:
        """Ask for a pong: it comes after every frame the server wrote before it."""
        assert self._ws is not None
        await self._ws.send('{"event":"ping"}')

    async def _read(self, ws: ClientConnection, connection: int, cut_after: int | None) -> None:
        taken = 0
        try:
            async for text in ws:
                self._take(json.loads(text), connection)
                taken += 1
                if taken == cut_after:
                    ws.transport.abort()  # the network goes, in the middle of whatever
                    self.cuts += 1
                    return
        except ConnectionClosed:
            pass

    def _take(self, frame: dict[str, Any], connection: int) -> None:
        kind = frame.get("event")
        if kind == "subscribed":
            channel = json.loads(frame["data"])["channel"]
            self.subscribed.append(
                Subscribed(
                    connection,
                    channel,
                    frame.get("positions"),
                    frame.get("recovered", ABSENT),
                    self._asked.get(channel),
                )
            )
        elif kind == "m":
            self.messages.append((connection, frame["data"], frame.get("positions")))
        elif kind == "pong":
            self.pongs += 1
        else:
            self.unexpected.append(frame)
        if isinstance(frame.get("positions"), dict):
            self.since.update(frame["positions"])  # Object.assign(since, frame.positions)


class Run:
    """One example: fresh channels, a socket per pair of them, and the broadcasts sent."""

    def __init__(self, nodes: Sequence[BifrostServer], http: Sequence[httpx.AsyncClient]) -> None:
        prefix = uuid.uuid4().hex[:12]
        self.nodes = nodes
        self.http = http
        self.channels = [f"{prefix}:{i}" for i in range(3)]
        self.sockets = [Socket([self.channels[i] for i in pair]) for pair in HEARD]
        self.sent: list[Sent] = []
        self.batch = 0
        self.racing: list[asyncio.Task[None]] = []

    def url(self, node: int) -> str:
        return self.nodes[node % len(self.nodes)].ws_url

    async def post(self, channels: Sequence[str], node: int, racing: bool = False) -> None:
        """Send a message whose data is its sequence number; keep the positions answered."""
        sent = Sent(len(self.sent), tuple(channels), self.batch, racing)
        self.sent.append(sent)
        token = broadcast_token({"event": "m", "data": sent.seq}, channels=channels)
        response = await self.http[node % len(self.http)].post("/broadcast", json={"token": token})
        assert response.status_code == 200, response.text
        sent.positions = response.json()["positions"]

    async def answered(self) -> None:
        """Wait for the racing broadcasts' answers: those sent next come after them."""
        if self.racing:
            racing, self.racing = self.racing, []
            await asyncio.gather(*racing)
            self.batch += 1

    def targets(self, broadcast: Broadcast) -> list[str]:
        return [self.channels[i] for i in broadcast.targets]

    def fire(self, racing: Sequence[Broadcast]) -> None:
        """Send broadcasts without waiting for their answers."""
        self.racing += [
            asyncio.create_task(self.post(self.targets(b), b.node, racing=True)) for b in racing
        ]

    async def step(self, step: Broadcast | Disconnect | Reconnect) -> None:
        match step:
            case Broadcast():
                await self.answered()
                await self.post(self.targets(step), step.node)
                self.batch += 1
            case Disconnect(socket=index, abrupt=abrupt):
                await self.sockets[index].disconnect(abrupt)
            case Reconnect(socket=index, node=node, racing=racing, pause=pause):

                async def race() -> None:
                    self.fire(racing)
                    await asyncio.sleep(pause)

                socket = self.sockets[index]
                await socket.connect(self.url(node), len(self.sent), step.cut_after, race)

    async def settle(self, what: str, done: Callable[[], bool]) -> None:
        """Wait until `done()`; fail saying what did not happen."""
        deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT
        while not done():
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"within {SETTLE_TIMEOUT} s, not {what}:\n{self.report()}")
            await asyncio.sleep(0.002)

    def report(self) -> str:
        lines = [f"sent: {[(s.seq, s.channels, s.positions) for s in self.sent]}"]
        for i, socket in enumerate(self.sockets):
            lines.append(f"socket {i} {socket.channels}: since {socket.since}")
            lines.append(f"  messages (connection, seq, positions) {socket.messages}")
            lines.append(f"  subscribed {socket.subscribed}")
        return "\n".join(lines)


async def run_example(
    nodes: Sequence[BifrostServer], sequence: Sequence[Broadcast | Disconnect | Reconnect]
) -> Run:
    """Connect every socket, carry out the steps, reconnect all, then let everything arrive."""
    clients = [httpx.AsyncClient(base_url=node.url, timeout=10) for node in nodes]
    run = Run(nodes, clients)
    try:
        for index, socket in enumerate(run.sockets):
            await socket.connect(run.url(index), len(run.sent))
        await run.settle(
            "subscribed everywhere", lambda: all(len(s.subscribed) == 2 for s in run.sockets)
        )
        for step in sequence:
            await run.step(step)
        await run.answered()
        for index, socket in enumerate(run.sockets):
            await socket.connect(run.url(index + 1), len(run.sent))
        # A last broadcast to all three channels: through it, each socket has heard them all.
        await run.post(run.channels, 0)
        tops = Counter(channel for sent in run.sent for channel in sent.channels)

        def caught_up() -> bool:
            return all(
                s.since.get(c, {}).get("offset") == tops[c] for s in run.sockets for c in s.channels
            )

        await run.settle("every socket at the top of its channels", caught_up)
        for socket in run.sockets:
            await socket.ping()
        await run.settle("a pong on every socket", lambda: all(s.pongs for s in run.sockets))
    finally:
        for socket in run.sockets:
            await socket.disconnect(abrupt=False)
        for task in run.racing:
            task.cancel()
        for client in clients:
            await client.aclose()
    return run


def count_recovered(run: Run) -> None:
    """Say, in the statistics, how many messages reconnections recovered and how many
    connections the example lost in the middle of their frames."""
    recovered = sum(
        1
        for socket in run.sockets
        for connection, seq, _ in socket.messages
        if connection > 1 and seq < socket.opened[connection - 1]
    )
    event("messages recovered", "none" if not recovered else "1-4" if recovered < 5 else "5+")
    racing = any(sent.racing for sent in run.sent)
    event("broadcasts racing a reconnect", "some" if racing else "none")
    cuts = sum(socket.cuts for socket in run.sockets)
    event("connections lost after some frames", "some" if cuts else "none")


def assert_recovered_everything(run: Run) -> None:
    """Each socket heard each of its channels' messages once, in order, at offsets 1..N."""
    expected: dict[str, list[int]] = {}
    epochs: dict[str, str] = {}
    for channel in run.channels:
        mine = [sent for sent in run.sent if channel in sent.channels]
        order = sorted(mine, key=lambda sent: sent.positions[channel]["offset"])
        offsets = [sent.positions[channel]["offset"] for sent in order]
        assert offsets == list(range(1, len(mine) + 1)), f"{channel} answered offsets {offsets}"
        (epochs[channel],) = {sent.positions[channel]["epoch"] for sent in mine}
        batches = [sent.batch for sent in order]
        assert batches == sorted(batches), f"{channel}: a later broadcast got an earlier offset"
        expected[channel] = [sent.seq for sent in order]
    for index, socket in enumerate(run.sockets):
        context = f"socket {index}\n{run.report()}"
        assert not socket.unexpected, context
        for frame in socket.subscribed:
            if frame.connection == 1:
                start = {"epoch": epochs[frame.channel], "offset": 0}
                assert (frame.recovered, frame.positions) == (ABSENT, {frame.channel: start}), (
                    context
                )
            else:
                assert (frame.recovered, frame.positions) == (True, {frame.channel: frame.asked}), (
                    context
                )
        seen = Counter(seq for _, seq, _ in socket.messages)
        assert all(count == 1 for count in seen.values()), f"a message twice: {context}"
        for _, seq, positions in socket.messages:
            sent = run.sent[seq]
            heard = [channel for channel in sent.channels if channel in socket.channels]
            assert positions == {channel: sent.positions[channel] for channel in heard}, context
        for channel in socket.channels:
            arrived = [seq for _, seq, positions in socket.messages if channel in positions]
            assert arrived == expected[channel], f"{channel}: {context}"
            top = {"epoch": epochs[channel], "offset": len(expected[channel])}
            assert socket.since[channel] == top, context


@pytest.fixture(scope="module")
def one_node(log_dir: Path) -> Iterator[list[BifrostServer]]:
    """One node, its history kept by the in-process broker."""
    node = BifrostServer(log_dir, HISTORY_ENV, name="recovery-local").start()
    yield [node]
    node.stop()
    node.assert_log_clean()


@pytest.fixture(scope="module")
def two_nodes(log_dir: Path) -> Iterator[list[BifrostServer]]:
    """Two nodes sharing one Redis, which keeps the history."""
    redis_server = RedisServer(log_dir).start()
    env = {"BIFROST_REDIS_URL": redis_server.url, **HISTORY_ENV}
    nodes: list[BifrostServer] = []
    try:
        for name in ("recovery-redis-a", "recovery-redis-b"):
            nodes.append(BifrostServer(log_dir, env, name=name).start())
        yield nodes
    finally:
        for node in nodes:
            node.stop()
        redis_server.stop()
    for node in nodes:
        node.assert_log_clean()


@PROPERTY_SETTINGS
@given(sequence=steps)
def test_recovery_on_one_node(one_node: list[BifrostServer], sequence: list[Any]) -> None:
    """On one node, whatever the interleaving, every socket ends with every message of its
    channels once, in order, at offsets 1..N of one epoch."""
    run = asyncio.run(run_example(one_node, sequence))
    count_recovered(run)
    assert_recovered_everything(run)


@PROPERTY_SETTINGS
@given(sequence=steps)
def test_recovery_across_two_nodes(two_nodes: list[BifrostServer], sequence: list[Any]) -> None:
    """Through Redis, with sockets reconnecting to either node and broadcasts sent to either,
    every socket ends with every message of its channels once, in order, at offsets 1..N."""
    run = asyncio.run(run_example(two_nodes, sequence))
    count_recovered(run)
    assert_recovered_everything(run)
