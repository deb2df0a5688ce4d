"""The README's event-stream code in a real Chromium's EventSource, against live servers.

The page runs the README's JavaScript verbatim, served by an application server of the
test's own, whose token endpoint counts how often the page asked it: a new EventSource needs
a token, a reconnection of the same one does not. Each test saves a screenshot of its page to
tests/artifacts/ and checks it is not blank.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from websockets.sync.client import connect

from bifrost.client import BifrostClient
from tests.chromium import PAGE_SCRIPT, BrowserPage, assert_not_blank
from tests.live import SECRET, BifrostServer, subscribe_token
from tests.redis_server import RedisServer
from tests.test_browser import README, ApplicationServer, browser, figure

__all__ = ["browser"]  # the fixture, shared with the other browser tests

SECTION = "## Server-sent events: EventSource and curl"
# Enough for every message sent while a node is down: one authenticate recovers at most
# this many in all, over both channels.
HISTORY = {"BIFROST_HISTORY_SIZE": "1000"}
CHANNELS = ["user:1", "global"]
# What the page logged: every message, every reload of a channel's state.
MESSAGES = "window.logged.filter((line) => line.startsWith('Bifrost msg: new_item '))"
RELOADED = "window.logged.filter((line) => line.startsWith('Reloading state of'))"
RESUME_TIMEOUT = 40.0


def readme_js_blocks() -> list[str]:
    """The JavaScript blocks of the README's event-stream section, verbatim."""
    text = README.read_text()
    section = text.split(f"\n{SECTION}\n", 1)
    assert len(section) == 2, f"the README has no {SECTION!r} section"
    blocks = re.findall(r"```js\n(.*?)```", section[1].split("\n## ", 1)[0], re.S)
    assert len(blocks) == 2, "the event-stream section has the five lines and the reopening"
    return blocks


def stream_page(snippet: str, live: BifrostServer) -> bytes:
    """An application's page running `snippet` against `live`, what it logs kept and shown."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>The README's EventSource code</title>
<script>
var BIFROST_URL = {json.dumps(live.url)};
{PAGE_SCRIPT}
</script>
<script type="module">
{snippet}
</script>
<style>
body {{ font: 16px sans-serif; margin: 2rem; }}
pre {{ background: #efe; padding: 1rem; }}
</style>
</head><body><h1>The README's EventSource code</h1>
<p>What it logged:</p><pre id="log"></pre></body></html>
""".encode()


class TokenEndpoint:
    """`/api/bifrost-token`: a fresh token for user:1 and global at each request, counted."""

    def __init__(self, ttl: float | None = None) -> None:
        self.ttl = ttl
        self.fetched = 0

    def __call__(self) -> tuple[str, bytes]:
        self.fetched += 1
        claims: dict[str, Any] = {}
        if self.ttl is not None:
            claims["exp"] = int(time.time() + self.ttl)
        return "application/json", json.dumps(
            {"token": subscribe_token(CHANNELS, **claims)}
        ).encode()


def application(snippet: str, live: BifrostServer, tokens: TokenEndpoint) -> ApplicationServer:
    return ApplicationServer(
        {
            "/": ("text/html; charset=utf-8", stream_page(snippet, live)),
            "/api/bifrost-token": tokens,
        }
    )


def received_ids(browser: BrowserPage) -> list[int]:
    """The ids of the `new_item` messages the page logged, in the order it logged them."""
    lines: list[str] = browser.evaluate(MESSAGES)
    return [json.loads(line.removeprefix("Bifrost msg: new_item "))["id"] for line in lines]


def wait_for_streams(live: BifrostServer, expected: int, timeout: float = 10.0) -> None:
    """Wait until the server counts `expected` event streams with both channels."""
    deadline = time.monotonic() + timeout
    while (stats := live.stats())["event_streams"] != expected or stats["subscriptions"] != (
        2 * expected
    ):
        assert time.monotonic() < deadline, f"{stats} after {timeout} s"
        time.sleep(0.05)


def test_readme_five_lines_hear_a_broadcast(start_server, browser: BrowserPage):
    """The README's five lines of EventSource get the `subscribed` events and a broadcast."""
    live: BifrostServer = start_server(name="sse-five-lines")
    tokens = TokenEndpoint()
    app = application(readme_js_blocks()[0], live, tokens)
    try:
        browser.goto(f"{app.url}/")
        browser.wait_for("window.logged.length === 2")
        assert browser.evaluate("window.logged") == [
            'Bifrost msg: subscribed {"channel":"user:1"}',
            'Bifrost msg: subscribed {"channel":"global"}',
        ]
        client = BifrostClient(live.url, SECRET)
        assert client.broadcast("user:1", "new_item", json.dumps({"id": 1})).deliveries == 1
        browser.wait_for(f"{MESSAGES}.length === 1")
        assert received_ids(browser) == [1]
        assert live.stats()["event_streams"] == 1
        assert_not_blank(browser.screenshot("readme-sse-five-lines.png"))
    finally:
        app.close()


class Sender:
    """Broadcasts numbered messages one after another in a thread, through node A while the
    test says it is up and through node B otherwise; every third to both channels."""

    def __init__(self, a: BifrostServer, b: BifrostServer) -> None:
        self.clients = {"a": BifrostClient(a.url, SECRET), "b": BifrostClient(b.url, SECRET)}
        self.a_up = threading.Event()
        self.a_up.set()
        self.sent: list[int] = []
        # Held for each broadcast: once taken, none is in flight.
        self._sending = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            n = 0
            while not self._stop.is_set():
                n += 1
                channels = CHANNELS if n % 3 == 0 else ["user:1"]
                with self._sending:
                    via = self.clients["a" if self.a_up.is_set() and n % 2 else "b"]
                    via.broadcast(channels, "new_item", json.dumps({"id": n}))
                    self.sent.append(n)
                time.sleep(0.03)
        except BaseException as error:
            self.error = error

    def avoid_a(self) -> None:
        """From now on through node B only, none still in flight to A: A may stop."""
        with self._sending:
            self.a_up.clear()

    def start(self) -> Sender:
        self._thread.start()
        return self

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(10)
        assert self.error is None, f"a broadcast failed: {self.error!r}"
        return self.sent


def restart_with_broadcasts(
    redis: RedisServer,
    start_server: Callable[..., BifrostServer],
    browser: BrowserPage,
    tokens: TokenEndpoint,
    name: str,
    down_for: float,
) -> tuple[list[int], list[int]]:
    """The README's reopening code on node A of two sharing a Redis; A restarts on its port
    while broadcasts go on; what was sent, and what the page logged."""
    env = {"BIFROST_REDIS_URL": redis.url, **HISTORY}
    a: BifrostServer = start_server(env, name=f"{name}-a")
    b: BifrostServer = start_server(env, name=f"{name}-b")
    app = application(readme_js_blocks()[1], a, tokens)
    try:
        browser.goto(f"{app.url}/")
        wait_for_streams(a, 1)
        sender = Sender(a, b).start()
        browser.wait_for(f"{MESSAGES}.length >= 10")
        sender.avoid_a()
        a.stop()
        time.sleep(down_for)
        a.start()
        sender.a_up.set()
        wait_for_streams(a, 1, timeout=RESUME_TIMEOUT)
        browser.wait_for(f"{MESSAGES}.length >= {len(sender.sent) + 10}", timeout=RESUME_TIMEOUT)
        sent = sender.stop()
        browser.wait_for(f"{MESSAGES}.length >= {len(sent)}", timeout=10)
        time.sleep(0.5)  # anything sent twice would have come by now
        assert browser.evaluate(RELOADED) == [], "a channel was not recovered"
        assert_not_blank(browser.screenshot(f"{name}.png"))
        return sent, received_ids(browser)
    finally:
        app.close()


def test_readme_stream_resumes_by_last_event_id_across_a_node_restart(
    redis_server: RedisServer, start_server, browser: BrowserPage
):
    """Node A of two restarts under the README's code while broadcasts go on through both:
    the browser's EventSource reconnects by itself and resumes from `Last-Event-ID` alone (no
    new token asked for, so no new EventSource): every message exactly once and in order."""
    tokens = TokenEndpoint()
    sent, received = restart_with_broadcasts(
        redis_server, start_server, browser, tokens, "readme-sse-restart", down_for=1.0
    )
    assert received == sent
    assert tokens.fetched == 1, "the page opened a new EventSource: Last-Event-ID did not suffice"


def test_readme_stream_reopens_with_a_fresh_token_after_a_401(
    redis_server: RedisServer, start_server, browser: BrowserPage
):
    """The token in the URL expires while node A is down: EventSource's reconnection gets 401
    and closes for good, the README's code opens a new one with a fresh token and the last id
    as `?since=`, and the page still gets every message exactly once and in order."""
    tokens = TokenEndpoint(ttl=1.0)  # past the 5 s leeway by the time A is back
    sent, received = restart_with_broadcasts(
        redis_server, start_server, browser, tokens, "readme-sse-reopen", down_for=6.5
    )
    assert received == sent
    assert tokens.fetched == 2, "the page did not reopen with a fresh token"


def test_status_page_shows_how_many_subscribers_use_each_transport(
    start_server, browser: BrowserPage
):
    """On /, the connected figure says how many are websockets and how many event streams."""
    live: BifrostServer = start_server(name="sse-status-page")
    tokens = TokenEndpoint()
    app = application(readme_js_blocks()[0], live, tokens)
    try:
        browser.goto(f"{app.url}/")
        browser.wait_for("window.logged.length === 2")
        with connect(live.ws_url) as ws:
            ws.send(json.dumps({"event": "authenticate", "data": subscribe_token(["figures"])}))
            assert json.loads(ws.recv(5))["event"] == "subscribed"
            status = BrowserPage()
            try:
                status.goto(f"{live.url}/")
                status.wait_for(
                    f"{figure('connected')} === 2 && {figure('websockets')} === 1"
                    f" && {figure('event_streams')} === 1"
                )
                assert_not_blank(status.screenshot("status-page-transports.png"))
            finally:
                status.close()
    finally:
        app.close()
