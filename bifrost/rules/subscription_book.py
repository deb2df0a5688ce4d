"""What one node has asked Redis to subscribe, per channel, and the answers Redis still owes.

No Redis and no asyncio here: the book only records commands and matches answers, so that its
rules are unit-tested with plain objects as waiters.

Redis answers SUBSCRIBE and UNSUBSCRIBE on a pub/sub connection in the order they were sent,
one answer per channel named. The book therefore keeps, per channel, the commands sent for it
in order, and hands each answer to the oldest one still owed: a channel subscribed, given up
and subscribed again within one round trip is confirmed by the answer to its last SUBSCRIBE,
never by the first. Every SUBSCRIBE carries a waiter, which every socket joining the channel
until the answer comes waits on, so that no socket hears `subscribed` before its channel is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["SubscriptionBook"]

W = TypeVar("W")


@dataclass(slots=True)
class _Channel(Generic[W]):
    """One channel: the answers owed on this connection, oldest first (a SUBSCRIBE's waiter,
    None for an UNSUBSCRIBE), what Redis last answered, and a subscription wanted while there
    is no connection to send it on."""

    owed: deque[W | None] = field(default_factory=deque)
    subscribed: bool = False
    unsent: W | None = None

    def wanted(self) -> bool:
        """Whether the channel is subscribed once every command sent for it is answered."""
        if self.unsent is not None:
            return True
        if self.owed:
            return self.owed[-1] is not None
        return self.subscribed

    def waiter(self) -> W | None:
        """What a socket joining now waits for: the answer to the last SUBSCRIBE, if owed."""
        if self.unsent is not None:
            return self.unsent
        if self.owed:
            return self.owed[-1]
        return None

    def idle(self) -> bool:
        return not self.owed and not self.subscribed and self.unsent is None


class SubscriptionBook(Generic[W]):
    """Per channel key, the SUBSCRIBE and UNSUBSCRIBE commands of one node and their answers.

    `new_waiter` makes what sockets wait on (an asyncio future in the broker).
    """

    def __init__(self, new_waiter: Callable[[], W]) -> None:
        self._new_waiter = new_waiter
        self._channels: dict[bytes, _Channel[W]] = {}
        self.connected = False

    def occupy(self, keys: Iterable[bytes]) -> list[bytes]:
        """Channels gaining their first local socket: those to SUBSCRIBE now, in one command.

        Without a connection nothing is sent: the channels are subscribed on the next one.
        """
        to_send = []
        for key in keys:
            state = self._channels.setdefault(key, _Channel())
            if state.wanted():
                continue
            if self.connected:
                state.owed.append(self._new_waiter())
                to_send.append(key)
            else:
                state.unsent = self._new_waiter()
        return to_send

    def vacate(self, keys: Iterable[bytes]) -> tuple[list[bytes], list[W]]:
        """Channels losing their last local socket: those to UNSUBSCRIBE now, in one command,
        and the waiters of subscriptions that will now never be sent (nobody is left on them)."""
        to_send: list[bytes] = []
        abandoned: list[W] = []
        for key in keys:
            state = self._channels.get(key)
            if state is None or not state.wanted():
                continue
            if state.unsent is not None:
                abandoned.append(state.unsent)
                state.unsent = None
            else:
                state.owed.append(None)
                to_send.append(key)
            self._forget_if_idle(key, state)
        return to_send, abandoned

    def waiters(self, keys: Iterable[bytes]) -> list[W]:
        """What a socket hearing these channels waits for before it may hear `subscribed`."""
        waiters = []
        for key in keys:
            state = self._channels.get(key)
            waiter = state.waiter() if state is not None else None
            if waiter is not None:
                waiters.append(waiter)
        return waiters

    def answered(self, key: bytes, subscribed: bool) -> W | None:
        """Redis answered the oldest command owed for the channel; the waiter it completes, if
        it answered a SUBSCRIBE. Channels the book never sent (the reply channel) give None."""
        state = self._channels.get(key)
        if state is None or not state.owed:
            return None
        waiter = state.owed.popleft()
        state.subscribed = subscribed
        self._forget_if_idle(key, state)
        return waiter

    def connect(self) -> list[bytes]:
        """A new connection: every wanted channel, to SUBSCRIBE on it now in one command."""
        self.connected = True
        keys = []
        for key, state in self._channels.items():
            if state.unsent is not None:
                state.owed.append(state.unsent)
                state.unsent = None
                keys.append(key)
        return keys

    def lost(self) -> None:
        """The connection is gone, and every answer it owed: the channels wanted are to be
        subscribed on the next one, and sockets joining them meanwhile wait for that."""
        self.connected = False
        for key, state in list(self._channels.items()):
            if state.wanted():
                self._channels[key] = _Channel(unsent=state.waiter() or self._new_waiter())
            else:
                del self._channels[key]

    def _forget_if_idle(self, key: bytes, state: _Channel[W]) -> None:
        if state.idle():
            del self._channels[key]
