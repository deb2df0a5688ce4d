"""The pages and the README's browser code in a real Chromium, against live servers.

Each test saves a screenshot of its page to tests/artifacts/ and checks it is not blank.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from websockets.sync.client import connect

from bifrost.client import BifrostClient
from tests.chromium import (
    BROWSER_DIR,
    PAGE_SCRIPT,
    BrowserPage,
    assert_not_blank,
    require_browser,
)
from tests.live import SECRET, BifrostServer, subscribe_token
from tests.redis_server import RedisServer

README = Path(__file__).resolve().parent.parent / "README.md"
RECONNECTING_WEBSOCKET = (
    BROWSER_DIR / "node_modules/reconnecting-websocket/dist/reconnecting-websocket-mjs.js"
)
RECONNECT_TIMEOUT = 40.0
COMPAT_SECTION = "### 2. Subscribe in the browser"
HISTORY_SECTION = "## Never miss a message: history and recovery"
HISTORY = {"BIFROST_HISTORY_SIZE": "100"}
# What the page logged: every `subscribed` (step 2's code), every message, every reload of a
# channel's state (the history section's code).
SUBSCRIBED = "window.logged.filter((line) => line.startsWith('Subscribed to'))"
MESSAGES = "window.logged.filter((line) => line.startsWith('Bifrost msg: '))"
RELOADED = "window.logged.filter((line) => line.startsWith('Reloading state of'))"


@pytest.fixture
def browser() -> Iterator[BrowserPage]:
    """A Chromium page, closed after the test."""
    require_browser()
    page = BrowserPage()
    yield page
    page.close()


def figure(name: str) -> str:
    """JavaScript for the number shown in the status page's figure `name`."""
    return f"Number(document.getElementById({json.dumps(name)}).textContent.replace(/,/g, ''))"


def test_playground_shows_form_and_sdk_broadcasts(start_server, browser: BrowserPage):
    """On /test, a broadcast from the page's form and one sent with the SDK both appear."""
    live: BifrostServer = start_server(args=["--single-process", "--debug"], name="playground")
    channel = "room:browser"
    browser.goto(f"{live.url}/test?channel={channel}")
    browser.wait_for(
        "document.getElementById('socket-status').textContent === 'subscribed to room:browser'"
    )
    browser.fill("#event", "from_form")
    browser.fill("#data", '{"text": "typed in the form"}')
    browser.click("#send")
    browser.wait_for("document.querySelector('#events li[data-event=\"from_form\"]')")
    browser.wait_for("document.getElementById('answer').textContent.startsWith('Delivered')")
    assert browser.text("#answer") == "Delivered to 1 socket."

    answer = BifrostClient(live.url, SECRET).broadcast(
        channel, "from_sdk", json.dumps({"text": "sent with the SDK"})
    )
    assert answer == {"message": "Success", "deliveries": 1}
    browser.wait_for("document.querySelector('#events li[data-event=\"from_sdk\"]')")
    shown = browser.evaluate(
        "[...document.querySelectorAll('#events li')].map((li) => li.textContent)"
    )
    assert len(shown) == 2
    assert "from_sdk" in shown[0] and "sent with the SDK" in shown[0]
    assert "from_form" in shown[1] and "typed in the form" in shown[1]
    assert browser.text("#count") == "2"
    assert_not_blank(browser.screenshot("playground.png"))


def test_status_page_figures_follow_broadcasts(start_server, browser: BrowserPage):
    """On /, the figures change after broadcasts and the chart draws deliveries per second."""
    live: BifrostServer = start_server(name="status-page")
    browser.goto(f"{live.url}/")
    browser.wait_for(f"{figure('deliveries')} === 0 && {figure('connected')} === 0")
    with connect(live.ws_url) as ws:
        ws.send(json.dumps({"event": "authenticate", "data": subscribe_token(["figures"])}))
        assert json.loads(ws.recv(5))["event"] == "subscribed"
        client = BifrostClient(live.url, SECRET)
        for n in range(3):
            assert client.broadcast("figures", "tick", str(n))["deliveries"] == 1
        browser.wait_for(f"{figure('deliveries')} === 3 && {figure('connected')} === 1")
        browser.wait_for("document.querySelectorAll('#chart rect.bar').length > 0")
        assert browser.text("#live") == "live: updated every second"
        assert_not_blank(browser.screenshot("status-page.png"))


def readme_browser_snippet(heading: str = COMPAT_SECTION) -> str:
    """The first JavaScript block of the README's section `heading`, verbatim."""
    text = README.read_text()
    section = text.split(f"\n{heading}\n", 1)
    assert len(section) == 2, f"the README has no {heading!r} section"
    found = re.search(r"```js\n(.*?)```", section[1].split("\n## ", 1)[0], re.S)
    assert found, f"the README's section {heading!r} has no js block"
    return found.group(1)


def snippet_page(snippet: str, ws_base: str) -> str:
    """An application's page running `snippet`, with what it logs also kept and shown."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>The README's browser code</title>
<script type="importmap">
{{"imports": {{"reconnecting-websocket": "/reconnecting-websocket.mjs"}}}}
</script>
<script>
var BIFROST_WSS_URL = {json.dumps(ws_base)};
{PAGE_SCRIPT}
</script>
<script type="module">
{snippet}
</script>
<style>
body {{ font: 16px sans-serif; margin: 2rem; }}
pre {{ background: #eef; padding: 1rem; }}
</style>
</head><body><h1>The README's browser code, with reconnecting-websocket</h1>
<p>What it logged:</p><pre id="log"></pre></body></html>
"""


# A page's content type and body, or what makes them afresh for each request.
Route = tuple[str, bytes] | Callable[[], tuple[str, bytes]]


class ApplicationServer:
    """An application's web server on loopback: pages by path, in a thread.

    It serves the page holding the README's snippet and the token endpoint the snippet
    fetches, from a real address: Chromium lets pages of loopback origins open sockets to
    loopback servers such as the Bifröst under test.
    """

    def __init__(self, routes: dict[str, Route]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path, ("text/plain", b"not found"))
                kind, body = route() if callable(route) else route
                self.send_response(200 if self.path in routes else 404)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def test_readme_snippet_reconnects_after_restart(start_server, browser: BrowserPage):
    """The README's browser code resubscribes after a restart on the same port and hears on."""
    live: BifrostServer = start_server(name="readme-snippet")
    application = snippet_application(readme_browser_snippet(), live)
    try:
        browser.goto(f"{application.url}/")
        subscribed = f"{SUBSCRIBED}.length"
        browser.wait_for(f"{subscribed} === 2")
        assert browser.evaluate("window.logged") == ["Subscribed to user:1", "Subscribed to global"]

        client = BifrostClient(live.url, SECRET)
        assert client.broadcast("user:1", "new_item", json.dumps({"id": 1}))["deliveries"] == 1
        browser.wait_for("window.logged.includes('Bifrost msg: new_item {\"id\":1}')")

        live.stop()
        live.start()
        browser.wait_for(f"{subscribed} === 4", timeout=RECONNECT_TIMEOUT)
        assert client.broadcast("user:1", "new_item", json.dumps({"id": 2}))["deliveries"] == 1
        browser.wait_for("window.logged.includes('Bifrost msg: new_item {\"id\":2}')")
        assert_not_blank(browser.screenshot("readme-snippet.png"))
    finally:
        application.close()


def snippet_application(snippet: str, live: BifrostServer) -> ApplicationServer:
    """The application serving `snippet` against `live`, and a token for user:1 and global."""
    page = snippet_page(snippet, live.ws_url.removesuffix("/subscribe"))
    token = json.dumps({"token": subscribe_token(["user:1", "global"])})
    return ApplicationServer(
        {
            "/": ("text/html; charset=utf-8", page.encode()),
            "/reconnecting-websocket.mjs": ("text/javascript", RECONNECTING_WEBSOCKET.read_bytes()),
            "/api/bifrost-token": ("application/json", token.encode()),
        }
    )


def wait_for_subscriptions(live: BifrostServer, expected: int, timeout: float = 10.0) -> None:
    """Wait until the server counts `expected` subscriptions: the page has authenticated."""
    deadline = time.monotonic() + timeout
    while (subscriptions := live.stats()["subscriptions"]) != expected:
        assert time.monotonic() < deadline, f"{subscriptions} subscriptions, not {expected}"
        time.sleep(0.05)


def received_ids(browser: BrowserPage) -> list[int]:
    """The ids of the `new_item` messages the page logged, in the order it logged them."""
    lines: list[str] = browser.evaluate(MESSAGES)
    return [json.loads(line.removeprefix("Bifrost msg: new_item "))["id"] for line in lines]


def test_readme_history_snippet_misses_nothing_across_a_restart(
    redis_server: RedisServer, start_server, browser: BrowserPage
):
    """The README's history code gets every message exactly once, in order, across a restart
    of its node: those sent through another node while it was down, and those sent the moment
    it is back, while the page is still reconnecting."""
    env = {"BIFROST_REDIS_URL": redis_server.url, **HISTORY}
    node: BifrostServer = start_server(env, name="history-snippet")
    other: BifrostServer = start_server(env, name="history-other")
    application = snippet_application(readme_browser_snippet(HISTORY_SECTION), node)
    sent: list[int] = []

    def send(via: BifrostServer, n: int, deliveries: int | None) -> None:
        # Every third message goes to both of the page's channels: it still arrives once.
        channels = ["user:1", "global"] if n % 3 == 0 else ["user:1"]
        answer = BifrostClient(via.url, SECRET).broadcast(
            channels, "new_item", json.dumps({"id": n})
        )
        assert deliveries is None or answer.deliveries == deliveries
        sent.append(n)

    try:
        browser.goto(f"{application.url}/")
        wait_for_subscriptions(node, 2)
        for n in range(1, 6):
            send(node, n, deliveries=1)
        browser.wait_for(f"{MESSAGES}.length === 5")

        node.stop()
        for n in range(6, 11):
            send(other, n, deliveries=0)
        node.start()
        for n in range(11, 16):
            send(node, n, deliveries=None)  # the page may or may not be back yet
        browser.wait_for(f"{MESSAGES}.length >= 15", timeout=RECONNECT_TIMEOUT)
        send(node, 16, deliveries=1)  # after it, nothing earlier can still arrive
        browser.wait_for(f"{MESSAGES}.some((line) => line.endsWith(':16}}'))")
        assert received_ids(browser) == sent == list(range(1, 17))
        assert browser.evaluate(RELOADED) == []
        assert_not_blank(browser.screenshot("readme-history-snippet.png"))
    finally:
        application.close()


def test_readme_history_snippet_reloads_what_a_restart_lost(start_server, browser: BrowserPage):
    """A node keeping history in-process starts its streams afresh when restarted: the
    README's history code is told each channel was not recovered, reloads it, and hears on."""
    live: BifrostServer = start_server(HISTORY, name="history-afresh")
    application = snippet_application(readme_browser_snippet(HISTORY_SECTION), live)
    try:
        browser.goto(f"{application.url}/")
        wait_for_subscriptions(live, 2)
        client = BifrostClient(live.url, SECRET)
        assert client.broadcast("user:1", "new_item", json.dumps({"id": 1})).deliveries == 1
        browser.wait_for(f"{MESSAGES}.length === 1")
        assert browser.evaluate(RELOADED) == []

        live.stop()
        live.start()
        browser.wait_for(f"{RELOADED}.length === 2", timeout=RECONNECT_TIMEOUT)
        assert browser.evaluate(RELOADED) == [
            "Reloading state of user:1",
            "Reloading state of global",
        ]
        assert client.broadcast("user:1", "new_item", json.dumps({"id": 2})).deliveries == 1
        browser.wait_for(f"{MESSAGES}.length === 2")
        assert received_ids(browser) == [1, 2]
        assert_not_blank(browser.screenshot("readme-history-reload.png"))
    finally:
        application.close()
