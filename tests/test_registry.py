"""Bookkeeping of `bifrost/rules/registry.py`, with plain listeners instead of sockets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bifrost.rules.event_ids import UNKNOWN, Cursor, IdLayouts, since_from_id, start_cursor
from bifrost.rules.history import Entry
from bifrost.rules.positions import Position
from bifrost.rules.protocol import text_frame
from bifrost.rules.registry import ChannelRegistry, Totals, write_gathered


@dataclass(eq=False)
class FakeSocket:
    """A listener that records the frames handed to it."""

    channels: set[str] = field(default_factory=set)
    received: list[bytes] = field(default_factory=list)
    positioned: bool = False
    held: list[Entry] | None = None
    cursor: Cursor | None = None
    closed: bool = False
    gathered: list[bytes] | None = None

    def write(self, frame: bytes) -> None:
        self.received.append(frame)


def test_first_subscriber_occupies_and_last_vacates():
    """A channel is reported occupied on its first socket and vacated after its last."""
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry()
    a, b = FakeSocket(), FakeSocket()
    registry.connect(a)
    registry.connect(b)
    assert registry.subscribe(a, ["x", "y"]) == ["x", "y"]
    assert registry.subscribe(b, ["y", "z"]) == ["z"]
    assert registry.subscribe(a, ["x"]) == []
    assert registry.disconnect(a) == ["x"]
    assert sorted(registry.disconnect(b)) == ["y", "z"]
    assert (registry.connected, registry.channel_count) == (0, 0)


def test_deliver_once_per_socket_and_count():
    """A message for several channels reaches each socket once, framed, and each is counted."""
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry()
    both, only_y, only_x = FakeSocket(), FakeSocket(), FakeSocket()
    for sock, channels in ((both, ["x", "y"]), (only_y, ["y"]), (only_x, ["x"])):
        registry.connect(sock)
        registry.subscribe(sock, channels)
    assert registry.deliver(["x", "y"], b'{"n":1}') == 3
    assert both.received == only_y.received == only_x.received == [text_frame(b'{"n":1}')]
    assert registry.deliver(["y"], b"g") == 2
    assert registry.deliver(["nobody"], b"h") == 0
    assert registry.figures() == Totals(connected=3, deliveries=5, channels=2, subscriptions=4)


def test_one_frame_is_built_for_every_socket():
    """The fan-out builds a message's frame once and hands the same bytes to each socket."""
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry()
    sockets = [FakeSocket() for _ in range(3)]
    for sock in sockets:
        registry.connect(sock)
        registry.subscribe(sock, ["x"])
    registry.deliver(["x"], b"{}")
    first = sockets[0].received[0]
    assert all(sock.received[0] is first for sock in sockets)


def test_withdrawn_socket_hears_nothing_but_still_counts_as_connected():
    """A closing socket leaves its channels at once and stays connected until it is gone."""
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry()
    staying, closing = FakeSocket(), FakeSocket()
    for sock in (staying, closing):
        registry.connect(sock)
    registry.subscribe(staying, ["x"])
    registry.subscribe(closing, ["x", "y"])
    assert registry.withdraw(closing) == ["y"]
    assert registry.deliver(["x", "y"], b"f") == 1
    assert closing.received == [] and staying.received == [text_frame(b"f")]
    assert registry.connected == 2
    assert registry.disconnect(closing) == []
    assert registry.connected == 1


def test_a_socket_leaving_during_the_fan_out_does_not_stop_it():
    """A write may close its socket, which leaves its channels in the middle of the loop."""
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry()
    sockets = [FakeSocket() for _ in range(10)]
    leaving = sockets[3]

    def write_then_leave(frame: bytes) -> None:
        leaving.received.append(frame)
        registry.withdraw(leaving)

    leaving.write = write_then_leave  # type: ignore[method-assign]
    for sock in sockets:
        registry.connect(sock)
        registry.subscribe(sock, ["x"])
    assert registry.deliver(["x"], b"f") == 10
    assert all(sock.received == [text_frame(b"f")] for sock in sockets)
    assert registry.deliver(["x"], b"g") == 9
    assert leaving.received == [text_frame(b"f")]


def test_join_leave_join_reports_each_occupation_and_vacancy():
    """A channel left by its last socket and joined again is reported vacated, then occupied
    anew, each time in the step it happens, so that the broker hears them in order."""
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry()
    first, second, third = FakeSocket(), FakeSocket(), FakeSocket()
    for sock in (first, second, third):
        registry.connect(sock)
    assert registry.subscribe(first, ["x"]) == ["x"]
    assert registry.withdraw(first) == ["x"]
    assert registry.subscribe(second, ["x"]) == ["x"]
    assert registry.disconnect(first) == [], "a socket already withdrawn vacates nothing again"
    assert registry.subscribe(third, ["x"]) == [], "a channel held by another is not occupied"
    assert registry.withdraw(second) == [], "nor vacated while another still hears it"
    assert registry.withdraw(third) == ["x"]
    assert registry.channel_count == 0


def test_positioned_frames_are_built_once_per_set_of_channels_heard():
    """Sockets hearing the same channels of a message share one frame object; unpositioned
    sockets share the plain frame, byte for byte the compat one."""
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry()
    plain = FakeSocket()
    both = [FakeSocket(positioned=True) for _ in range(3)]
    only_a = [FakeSocket(positioned=True) for _ in range(2)]
    for socket in (plain, *both, *only_a):
        registry.connect(socket)
    registry.subscribe(plain, ["a", "b"])
    for socket in both:
        registry.subscribe(socket, ["a", "b"])
    for socket in only_a:
        registry.subscribe(socket, ["a", "c"])
    positions = (("a", Position("ea", 7)), ("b", Position("eb", 2)))
    assert registry.deliver(["a", "b"], b'{"event":"e"}', positions) == 6
    assert plain.received == [text_frame(b'{"event":"e"}')]
    assert all(s.received[0] is both[0].received[0] for s in both)
    assert all(s.received[0] is only_a[0].received[0] for s in only_a)
    assert both[0].received == [
        text_frame(
            b'{"event":"e","positions":{"a":{"epoch":"ea","offset":7},'
            b'"b":{"epoch":"eb","offset":2}}}'
        )
    ]
    assert only_a[0].received == [
        text_frame(b'{"event":"e","positions":{"a":{"epoch":"ea","offset":7}}}')
    ]


def test_a_recovering_socket_holds_its_messages():
    """While a positioned socket recovers, what it is handed waits in `held`."""
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry()
    socket = FakeSocket(positioned=True, held=[])
    registry.connect(socket)
    registry.subscribe(socket, ["a"])
    positions = (("a", Position("e", 1)),)
    assert registry.deliver(["a"], b'{"event":"e"}', positions) == 1
    assert socket.received == []
    assert socket.held == [Entry(b'{"event":"e"}', positions)]


def test_a_socket_positioned_later_keeps_its_channels():
    """A socket that becomes positioned still hears its channels, now with positions."""
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry()
    socket = FakeSocket()
    registry.connect(socket)
    assert registry.subscribe(socket, ["a"]) == ["a"]
    registry.position(socket)
    assert registry.figures() == Totals(connected=1, deliveries=0, channels=1, subscriptions=1)
    registry.deliver(["a"], b'{"event":"e"}', (("a", Position("e", 1)),))
    assert socket.received == [
        text_frame(b'{"event":"e","positions":{"a":{"epoch":"e","offset":1}}}')
    ]
    assert registry.disconnect(socket) == ["a"]


def stream(layouts: IdLayouts, channels: list[str], since: dict[str, Position]) -> FakeSocket:
    """An event stream of these channels, at these positions."""
    return FakeSocket(cursor=start_cursor(layouts.layout(channels), since))


def test_event_streams_share_one_event_and_leave_websockets_as_they_were():
    """History off: every stream of a channel takes the same `data:` event, built once, and
    the websockets beside them the same compat frame as ever; both count as connected."""
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry()
    layouts = IdLayouts()
    socket = FakeSocket()
    streams = [stream(layouts, ["x", "y"], {}) for _ in range(3)]
    for listener in (socket, *streams):
        registry.connect(listener)
        registry.subscribe(listener, ["x", "y"])
    assert registry.deliver(["x"], b'{"event":"e"}') == 4
    assert registry.deliver(["x", "y"], b'{"event":"f"}') == 4
    assert socket.received == [text_frame(b'{"event":"e"}'), text_frame(b'{"event":"f"}')]
    assert streams[0].received == [b'data: {"event":"e"}\n\n', b'data: {"event":"f"}\n\n']
    assert all(s.received[0] is streams[0].received[0] for s in streams)
    assert registry.figures() == Totals(
        connected=4, deliveries=8, channels=2, subscriptions=8, event_streams=3
    )
    registry.disconnect(streams[0])
    registry.disconnect(streams[0])
    assert (registry.connected, registry.event_streams) == (3, 2)


def test_positioned_streams_at_the_same_positions_share_one_event():
    """Streams of one token at the same positions take one event object, whose id names the
    message's position and every other position of the stream, and move on to one cursor;
    a stream elsewhere gets an id of its own, and a positioned websocket its frame."""
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry()
    layouts = IdLayouts()
    start = {"a": Position("e", 3), "b": Position("f", 1)}
    alike = [stream(layouts, ["a", "b"], start) for _ in range(3)]
    behind = stream(layouts, ["a", "b"], {"a": Position("e", 3)})
    socket = FakeSocket()
    for listener in (*alike, behind, socket):
        registry.connect(listener)
        registry.subscribe(listener, ["a", "b"])
        registry.position(listener)
    message = (("a", Position("e", 4)),)
    assert registry.deliver(["a"], b'{"event":"e"}', message) == 5
    layout = alike[0].cursor.layout
    data = b'{"event":"e","positions":{"a":{"epoch":"e","offset":4}}}'
    expected_id = start_cursor(layout, {**start, "a": Position("e", 4)}).id
    assert alike[0].received == [b"id: " + expected_id.encode() + b"\ndata: " + data + b"\n\n"]
    assert all(s.received[0] is alike[0].received[0] for s in alike)
    assert all(s.cursor is alike[0].cursor for s in alike)
    assert since_from_id(behind.cursor.id, layout) == {"a": Position("e", 4), "b": UNKNOWN}
    assert socket.received == [text_frame(data)]


def test_a_stream_hearing_some_channels_of_a_message_names_its_own_positions():
    """A message to several channels names, in the event and its id, the positions of the
    channels the stream hears; streams hearing other sets get other events."""
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry()
    layouts = IdLayouts()
    both = stream(layouts, ["a", "b"], {})
    only_b = stream(layouts, ["b"], {})
    for listener, channels in ((both, ["a", "b"]), (only_b, ["b"])):
        registry.connect(listener)
        registry.subscribe(listener, channels)
        registry.position(listener)
    positions = (("a", Position("e", 1)), ("b", Position("f", 9)))
    assert registry.deliver(["a", "b"], b'{"event":"e"}', positions) == 2
    assert (
        b'"positions":{"a":{"epoch":"e","offset":1},"b":{"epoch":"f","offset":9}}'
        in (both.received[0])
    )
    assert b'"positions":{"b":{"epoch":"f","offset":9}}}' in only_b.received[0]
    assert since_from_id(both.cursor.id, both.cursor.layout) == dict(positions)
    assert since_from_id(only_b.cursor.id, only_b.cursor.layout) == {"b": Position("f", 9)}


def test_a_recovering_stream_holds_its_messages():
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry()
    recovering = stream(IdLayouts(), ["a"], {})
    recovering.held = []
    registry.connect(recovering)
    registry.subscribe(recovering, ["a"])
    registry.position(recovering)
    before = recovering.cursor
    positions = (("a", Position("e", 1)),)
    assert registry.deliver(["a"], b'{"event":"e"}', positions) == 1
    assert recovering.received == [] and recovering.cursor is before
    assert recovering.held == [Entry(b'{"event":"e"}', positions)]


class Turns:
    """Stands for the loop's `call_soon`: keeps the callbacks until the test ends the turn."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []

    def __call__(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    def end(self) -> None:
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()


def test_the_first_broadcast_of_a_turn_is_written_at_once():
    """A turn with one broadcast writes each socket's frame at once, one write each."""
    turns = Turns()
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry(turns)
    sockets = [FakeSocket() for _ in range(3)]
    for socket in sockets:
        registry.subscribe(socket, ["c"])
    assert registry.deliver(["c"], b'{"n":0}') == 3
    assert all(socket.received == [text_frame(b'{"n":0}')] for socket in sockets)
    assert len(turns.callbacks) == 1
    turns.end()
    assert all(len(socket.received) == 1 for socket in sockets)


def test_a_burst_in_one_turn_goes_out_in_two_writes_in_order():
    """Broadcasts after the first of a turn are gathered and written as one write, in order,
    when the turn ends; one callback per turn, whatever the number of sockets."""
    turns = Turns()
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry(turns)
    sockets = [FakeSocket() for _ in range(3)]
    for socket in sockets:
        registry.subscribe(socket, ["c"])
    frames = [text_frame(b'{"n":%d}' % n) for n in range(5)]
    for n in range(5):
        assert registry.deliver(["c"], b'{"n":%d}' % n) == 3
    assert all(socket.received == frames[:1] for socket in sockets)
    assert len(turns.callbacks) == 1
    turns.end()
    for socket in sockets:
        assert socket.received == [frames[0], b"".join(frames[1:])]
        assert socket.gathered is None
    assert registry.deliveries == 15
    registry.deliver(["c"], b'{"n":5}')
    assert sockets[0].received[-1] == text_frame(b'{"n":5}'), "a new turn writes at once again"


def test_a_socket_writing_itself_writes_its_gathered_frames_first():
    """What a socket writes itself (a reply, a close) follows the frames gathered for it."""
    turns = Turns()
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry(turns)
    socket = FakeSocket()
    registry.subscribe(socket, ["c"])
    for n in range(3):
        registry.deliver(["c"], b'{"n":%d}' % n)
    write_gathered(socket)
    socket.write(b"own reply")
    turns.end()
    assert socket.received == [
        text_frame(b'{"n":0}'),
        text_frame(b'{"n":1}') + text_frame(b'{"n":2}'),
        b"own reply",
    ]


def test_a_socket_closed_during_the_turn_gets_no_gathered_frames_from_the_registry():
    """A socket that closed (gone, or having written its frames before its close) is skipped."""
    turns = Turns()
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry(turns)
    gone, other = FakeSocket(), FakeSocket()
    for socket in (gone, other):
        registry.subscribe(socket, ["c"])
    registry.deliver(["c"], b"0")
    registry.deliver(["c"], b"1")
    gone.closed = True
    registry.withdraw(gone)
    turns.end()
    assert gone.received == [text_frame(b"0")]
    assert other.received == [text_frame(b"0"), text_frame(b"1")]


def test_positioned_frames_and_events_of_a_burst_are_gathered_in_order():
    """Positioned sockets and event streams keep their order within a burst too."""
    turns = Turns()
    registry: ChannelRegistry[FakeSocket] = ChannelRegistry(turns)
    socket = FakeSocket()
    registry.position(socket)
    registry.subscribe(socket, ["c"])
    streamed = FakeSocket(cursor=start_cursor(IdLayouts().layout(["c"]), {}))
    registry.subscribe(streamed, ["c"])
    for offset in (1, 2, 3):
        registry.deliver(["c"], b"{}", [("c", Position("e", offset))])
    turns.end()
    assert len(socket.received) == 2 and len(streamed.received) == 2
    text = b"".join(socket.received)
    assert text.index(b'"offset":1') < text.index(b'"offset":2') < text.index(b'"offset":3')
