"""The subscription book's rules: which commands go to Redis, and which answer confirms whom."""

from __future__ import annotations

from itertools import count

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
