"""The subscription book's rules: which commands go to Redis, and which answer confirms whom;
with the registry before it, the first-subscriber/last-leaver race of a channel."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count

from bifrost.rules.history import Entry
from bifrost.rules.registry import ChannelRegistry
from bifrost.rules.subscription_book import SubscriptionBook

A, B, C = b"a", b"b", b"c"


class Waiter:
    """A numbered stand-in for the future sockets wait on."""

    def __init__(self, number: int) -> None:
        self.number = number

    def __repr__(self) -> str:
        return f"Waiter({self.number})"


def connected_book() -> SubscriptionBook[Waiter]:
    numbers = count()
    book = SubscriptionBook(lambda: Waiter(next(numbers)))
    assert book.connect() == []
    return book


def test_channels_occupied_together_go_out_in_one_subscribe():
    """The new channels of one token are one SUBSCRIBE, and its socket waits on each of them."""
    book = connected_book()
    assert book.occupy([A, B, C]) == [A, B, C]
    waiters = book.waiters([A, B, C])
    assert len(set(waiters)) == 3
    assert [book.answered(key, True) for key in (A, B, C)] == waiters
    assert book.waiters([A, B, C]) == []


def test_second_joiner_waits_on_the_same_pending_subscription():
    """A socket joining a channel whose SUBSCRIBE is unanswered waits for that answer."""
    book = connected_book()
    book.occupy([A])
    first = book.waiters([A])
    assert book.occupy([A]) == [], "a channel already on its way is not subscribed twice"
    assert book.waiters([A]) == first
    book.answered(A, True)
    assert book.waiters([A]) == []


def test_subscribe_unsubscribe_subscribe_is_confirmed_by_the_last_answer():
    """Answers are matched in order: the first SUBSCRIBE's answer does not confirm the last."""
    book = connected_book()
    book.occupy([A])
    [gone] = book.waiters([A])
    assert book.vacate([A]) == ([A], [])
    assert book.waiters([A]) == []
    assert book.occupy([A]) == [A]
    [staying] = book.waiters([A])
    assert book.answered(A, True) is gone
    assert book.waiters([A]) == [staying]
    assert book.answered(A, False) is None
    assert book.waiters([A]) == [staying]
    assert book.answered(A, True) is staying
    assert book.waiters([A]) == []


def test_vacated_channel_is_unsubscribed_once_and_forgotten():
    """A channel given up is one UNSUBSCRIBE; after its answer the book holds nothing of it."""
    book = connected_book()
    book.occupy([A, B])
    book.answered(A, True)
    book.answered(B, True)
    assert book.vacate([A, B]) == ([A, B], [])
    assert book.vacate([A]) == ([], []), "not given up twice"
    book.answered(A, False)
    book.answered(B, False)
    assert book.occupy([A]) == [A]


def test_answers_for_channels_never_sent_are_ignored():
    """The reply channel's own answer, or one arriving after a loss, confirms nobody."""
    book = connected_book()
    assert book.answered(b"reply", True) is None
    book.occupy([A])
    book.lost()
    assert book.answered(A, True) is None


def test_without_a_connection_channels_wait_for_the_next_one():
    """Channels occupied while disconnected are subscribed on connection, their sockets
    waiting for that; a channel left meanwhile is not subscribed at all."""
    numbers = count()
    book = SubscriptionBook(lambda: Waiter(next(numbers)))
    assert book.occupy([A, B]) == []
    [waiting] = book.waiters([A])
    [abandoned] = book.waiters([B])
    assert book.vacate([B]) == ([], [abandoned])
    assert book.connect() == [A]
    assert book.answered(A, True) is waiting


def test_loss_makes_every_wanted_channel_wait_for_the_next_connection():
    """After a loss, sockets joining a channel subscribed before wait for it to be subscribed
    again; those already waiting keep their wait; channels given up are not resubscribed."""
    book = connected_book()
    book.occupy([A, B, C])
    book.answered(A, True)
    [pending_b] = book.waiters([B])
    book.vacate([C])
    book.lost()
    [again_a] = book.waiters([A])
    assert book.waiters([B]) == [pending_b]
    assert book.waiters([C]) == []
    assert sorted(book.connect()) == [A, B]
    assert book.answered(A, True) is again_a
    assert book.answered(B, True) is pending_b


class Node:
    """A worker's registry telling its broker's book, as the subscribe blueprint tells the
    Redis broker: the commands it would send, and what each joining socket waits on."""

    def __init__(self) -> None:
        self.registry: ChannelRegistry[Socket] = ChannelRegistry()
        self.book = connected_book()
        self.sent: list[tuple[str, list[bytes]]] = []

    def join(self, socket: Socket, channels: list[str]) -> list[Waiter]:
        self.registry.connect(socket)
        occupied = self.registry.subscribe(socket, channels)
        keys = self.book.occupy(channel.encode() for channel in occupied)
        if keys:
            self.sent.append(("SUBSCRIBE", keys))
        return self.book.waiters(channel.encode() for channel in channels)

    def leave(self, socket: Socket) -> list[Waiter]:
        vacated = self.registry.disconnect(socket)
        keys, abandoned = self.book.vacate(channel.encode() for channel in vacated)
        if keys:
            self.sent.append(("UNSUBSCRIBE", keys))
        return abandoned


@dataclass(eq=False)
class Socket:
    """A listener that hears nothing: only its channels matter here."""

    channels: set[str] = field(default_factory=set)
    positioned: bool = False
    held: list[Entry] | None = None
    cursor: None = None

    def write(self, frame: bytes) -> None:
        pass


def test_join_leave_join_within_one_round_trip_waits_for_the_last_subscribe():
    """A channel joined, left and joined again before Redis answers is SUBSCRIBE, UNSUBSCRIBE,
    SUBSCRIBE in that order; the socket that stays is confirmed by the third answer only."""
    node = Node()
    leaving = Socket()
    [gone] = node.join(leaving, ["x"])
    assert node.leave(leaving) == []
    staying = Socket()
    [waited] = node.join(staying, ["x"])
    assert node.sent == [("SUBSCRIBE", [b"x"]), ("UNSUBSCRIBE", [b"x"]), ("SUBSCRIBE", [b"x"])]
    assert waited is not gone
    assert node.book.answered(b"x", True) is gone
    assert node.book.answered(b"x", False) is None
    assert node.book.waiters([b"x"]) == [waited], "still unconfirmed after the UNSUBSCRIBE"
    assert node.book.answered(b"x", True) is waited
    assert node.join(Socket(), ["x"]) == [], "a later joiner is subscribed at once"
    assert len(node.sent) == 3


def test_leave_before_the_answer_is_followed_by_an_unsubscribe():
    """The last socket leaving while its SUBSCRIBE is unanswered is an UNSUBSCRIBE sent behind
    it, so that Redis ends unsubscribed; the next joiner subscribes afresh."""
    node = Node()
    only = Socket()
    [pending] = node.join(only, ["x"])
    assert node.leave(only) == [], "the SUBSCRIBE is sent: its answer still comes"
    assert node.sent == [("SUBSCRIBE", [b"x"]), ("UNSUBSCRIBE", [b"x"])]
    assert node.book.answered(b"x", True) is pending
    assert node.book.answered(b"x", False) is None
    node.join(Socket(), ["x"])
    assert node.sent[-1] == ("SUBSCRIBE", [b"x"])


def test_join_leave_join_leave_within_one_round_trip_ends_unsubscribed():
    """Two whole visits within one round trip are four commands in order, and once answered
    the book holds nothing of the channel: the next joiner subscribes again."""
    node = Node()
    for _ in range(2):
        visitor = Socket()
        node.join(visitor, ["x"])
        node.leave(visitor)
    assert [command for command, _ in node.sent] == [
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
    ]
    for subscribed in (True, False, True, False):
        node.book.answered(b"x", subscribed)
    [waiter] = node.join(Socket(), ["x"])
    assert node.sent[-1] == ("SUBSCRIBE", [b"x"])
    assert node.book.answered(b"x", True) is waiter


def test_join_leave_join_without_a_connection_sends_one_subscribe():
    """Joined, left and joined again while Redis is away, the channel is one SUBSCRIBE on the
    next connection, awaited by the socket that stayed; the leaver's wait is abandoned."""
    numbers = count()
    node = Node()
    node.book = SubscriptionBook(lambda: Waiter(next(numbers)))
    leaving = Socket()
    [abandoned] = node.join(leaving, ["x"])
    assert node.leave(leaving) == [abandoned]
    [waited] = node.join(Socket(), ["x"])
    assert node.sent == []
    assert node.book.connect() == [b"x"]
    assert node.book.answered(b"x", True) is waited
