"""The `id:` of an event stream's events: every position of the subscription, in one header.

The browser sends the last id back as `Last-Event-ID` when it reconnects, and nothing else of
where it stopped, so the id must say where each of the stream's channels continues. It must
also fit in a request header for the most channels a token may name (100 names of up to 255
characters), so it names a channel by a short hash of its name, never by the name itself:

    <hash>.<epoch>.<offset>~<hash>.<epoch>.<offset>~<hash>

one part per channel of the token, in the token's order, joined with `~`. A hash is 8
characters of base64url (48 bits of BLAKE2b), an epoch is Bifröst's (base64url), an offset a
whole number; the separators are outside the base64url alphabet and need no escaping in a
URL (`?since=`) or a header. A part that is a hash alone names the channel at a position that
is not known: with history off, where there is nothing to resume from, and for a channel whose
`subscribed` event has not been sent yet. Such a channel, like every channel of an id that does
not decode, is `recovered: false` on the next connection: the client reloads its state, as it
must when it cannot be told what it missed. About 30 characters a channel: 3 KB for 100.

Streams at the same positions have the same id, so that the fan-out builds a message's event
once for all of them (`bifrost.rules.registry`): a `Cursor` is immutable, and a stream's next
cursor is shared by every stream that was at the same one.
"""

from __future__ import annotations

import base64
import hashlib
import re
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bifrost.rules.positions import MAX_EPOCH_LENGTH, Position

__all__ = [
    "UNKNOWN",
    "Cursor",
    "IdLayout",
    "IdLayouts",
    "channel_hash",
    "since_from_id",
    "start_cursor",
]

PART_SEPARATOR = "~"
FIELD_SEPARATOR = "."
HASH_BYTES = 6  # 8 characters of base64url, without padding
# A position nobody can resume from: the epoch of no stream. Recovery finds it differs from the
# channel's, so the channel is `recovered: false`.
UNKNOWN = Position("", 0)
# An offset longer than this is no offset of Bifröst's (2^63 has 19 digits).
MAX_OFFSET_DIGITS = 19
_EPOCH = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_EPOCH_LENGTH}}}")
_OFFSET = re.compile(rf"[0-9]{{1,{MAX_OFFSET_DIGITS}}}")


def channel_hash(channel: str) -> str:
    """The 8 characters that name a channel in an id."""
    digest = hashlib.blake2b(channel.encode(), digest_size=HASH_BYTES).digest()
    return base64.urlsafe_b64encode(digest).decode()


class IdLayout:
    """The channels of a stream, in the token's order, and the hash that names each.

    Made once per distinct list of channels (`IdLayouts`), so that streams of the same token
    share it and the fan-out can tell their cursors apart from others' by identity.
    """

    __slots__ = ("__weakref__", "channels", "hashes", "slots")

    def __init__(self, channels: Sequence[str]) -> None:
        self.channels = tuple(channels)
        self.hashes = tuple(channel_hash(channel) for channel in self.channels)
        self.slots = {channel: slot for slot, channel in enumerate(self.channels)}


class IdLayouts:
    """One `IdLayout` per list of channels in use, forgotten when no stream holds it."""

    def __init__(self) -> None:
        self._layouts: weakref.WeakValueDictionary[tuple[str, ...], IdLayout] = (
            weakref.WeakValueDictionary()
        )

    def layout(self, channels: Sequence[str]) -> IdLayout:
        key = tuple(channels)
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._layouts[key] = IdLayout(key)
        return layout


@dataclass(frozen=True, slots=True, eq=False)
class Cursor:
    """Where a stream stands in each of its channels, and the id that says so."""

    layout: IdLayout
    parts: tuple[str, ...]
    id: str

    def advanced(self, positions: Iterable[tuple[str, Position]]) -> Cursor:
        """The cursor after an event that stands at these positions (those of channels outside
        the stream are ignored)."""
        parts = list(self.parts)
        slots, hashes = self.layout.slots, self.layout.hashes
        for channel, position in positions:
            slot = slots.get(channel)
            if slot is not None:
                parts[slot] = _part(hashes[slot], position)
        return Cursor(self.layout, tuple(parts), PART_SEPARATOR.join(parts))


def start_cursor(layout: IdLayout, since: Mapping[str, Position]) -> Cursor:
    """A new stream's cursor: the positions it was asked to resume from, every other channel
    at a position not known until its `subscribed` event says it."""
    parts = tuple(
        _part(hash_, since.get(channel, UNKNOWN))
        for channel, hash_ in zip(layout.channels, layout.hashes, strict=True)
    )
    return Cursor(layout, parts, PART_SEPARATOR.join(parts))


def since_from_id(event_id: str, layout: IdLayout) -> dict[str, Position]:
    """The `since` an id says, for the stream's channels.

    Channels the id does not name are not in it (a first connection for them); channels it
    names by a hash alone are at `UNKNOWN`; hashes of no channel of the stream are ignored, as
    `since` ignores channels outside the token. An id that does not decode names every channel
    at `UNKNOWN`: refusing it would stop the browser's EventSource for good, and taking it as a
    first connection would let the client believe it missed nothing.
    """
    by_hash = dict(zip(layout.hashes, layout.channels, strict=True))
    since: dict[str, Position] = {}
    seen: set[str] = set()
    for part in event_id.split(PART_SEPARATOR):
        fields = part.split(FIELD_SEPARATOR)
        hash_ = fields[0]
        if hash_ in seen or not _is_hash(hash_) or len(fields) not in (1, 3):
            return dict.fromkeys(layout.channels, UNKNOWN)
        seen.add(hash_)
        position = UNKNOWN
        if len(fields) == 3:
            epoch, offset = fields[1], fields[2]
            if not _EPOCH.fullmatch(epoch) or not _OFFSET.fullmatch(offset):
                return dict.fromkeys(layout.channels, UNKNOWN)
            position = Position(epoch, int(offset))
        channel = by_hash.get(hash_)
        if channel is not None:
            since[channel] = position
    return since


def _part(hash_: str, position: Position) -> str:
    """One channel's part of an id; a position that cannot be written safely (an epoch that is
    not Bifröst's, which a shared Redis could hold) is written as not known."""
    if position.epoch and _EPOCH.fullmatch(position.epoch) and position.offset >= 0:
        return f"{hash_}.{position.epoch}.{position.offset}"
    return hash_


def _is_hash(text: str) -> bool:
    return len(text) == 8 and _EPOCH.fullmatch(text) is not None
