"""The hand-over rules of `bifrost/handshake.py` that a live client cannot reach on demand."""

from __future__ import annotations

from types import SimpleNamespace

import orjson

from bifrost.handshake import upgrade

UPGRADE_HEADERS = {
    "host": "127.0.0.1",
    "upgrade": "websocket",
    "connection": "Upgrade",
    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    "sec-websocket-version": "13",
}


class UnsentTransport:
    """A connection whose earlier answers the client has not read yet."""

    def get_write_buffer_size(self) -> int:
        return 70_000


def test_upgrade_behind_unread_answers_is_refused():
    """A client that pipelined requests without reading their answers cannot upgrade: its
    socket would start with writing paused, where the slow-consumer bound never fires."""
    request = SimpleNamespace(
        headers=UPGRADE_HEADERS, path="/subscribe", transport=UnsentTransport()
    )
    served: list[object] = []
    answer = upgrade(request, lambda transport, ws: served.append(transport), 65536)  # type: ignore[arg-type]
    assert answer is not None and answer.status == 400
    assert orjson.loads(answer.body) == {
        "error": "A websocket upgrade must not follow unread answers"
    }
    assert served == []
