"""The pages for people, over HTTP: `/` always, the `/test` playground only in development."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import jwt
import pytest
from websockets.sync.client import connect

from bifrost.blueprints.pages import STATIC_DIR, PlaygroundRefusal, playground_broadcast
from bifrost.rules.settings import Settings
from tests.live import SECRET, BifrostServer

DEBUG_ARGS = ("--single-process", "--debug")
PAGE_PATHS = ("/", "/test", "/test/token", "/test/broadcast-token")
# A name, not an address: SVG elements are created in it; nothing is fetched from it.
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


@pytest.fixture(scope="module")
def dev_server(log_dir: Path) -> Iterator[BifrostServer]:
    """A server in development mode, where the playground exists."""
    live = BifrostServer(log_dir, args=DEBUG_ARGS, name="pages-dev").start()
    yield live
    live.stop()
    live.assert_log_clean()


def test_status_page_says_what_this_is(server: BifrostServer):
    """`GET /` is an HTML page naming Bifröst, its version and its endpoints, no playground link."""
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for text in ("Bifröst", "0.1.0", "/info.json", "POST /broadcast", "/subscribe"):
        assert text in page.text
    assert '<p id="dev-link" hidden>' in page.text


def test_pages_load_nothing_from_elsewhere(server: BifrostServer):
    """The pages allow only their own origin and reference no other one."""
    policy = httpx.get(f"{server.url}/").headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        references = re.findall(r"""(?:src|href)=["']([^"']+)""", text)
        assert all(ref.startswith(("/", "data:")) for ref in references), (path, references)
        urls = set(re.findall(r"(?:https?|wss?)://[^\s\"'`]+", text))
        assert urls <= {SVG_NAMESPACE}, (path, urls)


def test_static_files_are_served(server: BifrostServer):
    """The pages' scripts and styles are served from /static with their types."""
    for name, kind in [("status.js", "javascript"), ("bifrost.css", "css")]:
        answer = httpx.get(f"{server.url}/static/{name}")
        assert answer.status_code == 200 and kind in answer.headers["content-type"]


# Request targets that name no file of the folder: the folder itself, escapes, NUL bytes,
# names too long for the file system, a file taken for a folder, odd and broken UTF-8.
# (Bytes outside ASCII, unencoded, are no request target at all: Sanic answers 400 JSON.)
NOT_STATIC_FILES = (
    b"/static",
    b"/static/",
    b"/static/.",
    b"/static//",
    b"/static/./",
    b"/static/%00",
    b"/static/status.js%00",
    b"/static/%00/../status.js",
    b"/static/..",
    b"/static/../app.py",
    b"/static/%2e%2e/app.py",
    b"/static/..%2fapp.py",
    b"/static/%2fetc%2fpasswd",
    b"/static//etc/passwd",
    b"/static/status.js/x",
    b"/static/" + b"a" * 300,
    b"/static/" + b"a/" * 2000,
    b"/static/%ED%A0%80",
    b"/static/%ff%fe",
    b"/static/st%61tus.html/..",
)


def raw_get(live: BifrostServer, target: bytes) -> tuple[int, bytes]:
    """The status and body of a GET of `target` exactly as written, no client normalising it."""
    request = b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", live.port), timeout=5) as sock:
        sock.sendall(request)
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_paths_outside_the_static_files_answer_404_json(start_server):
    """A /static path that is no file of the folder answers 404 JSON, with nothing in the log."""
    live = start_server()
    for target in NOT_STATIC_FILES:
        status, body = raw_get(live, target)
        assert status == 404, target
        assert json.loads(body)["error"], target
    for target in (b"/static/\xc3\xa9", b"/static/\xff"):
        status, body = raw_get(live, target)
        assert (status, json.loads(body)) == (
            400,
            {"error": "URL may only contain US-ASCII characters."},
        )
    assert raw_get(live, b"/static/status.js")[0] == 200
    live.assert_log_clean()
    assert "ERROR" not in live.log()


def test_playground_is_404_outside_development(server: BifrostServer):
    """Outside development mode, /test and its token endpoints answer 404 with a JSON error."""
    for method, path in [
        ("GET", "/test"),
        ("GET", "/test/token"),
        ("POST", "/test/broadcast-token"),
    ]:
        answer = httpx.request(method, f"{server.url}{path}", json={"event": "x"})
        assert answer.status_code == 404, path
        assert answer.json()["error"]


def test_pages_stay_out_of_the_openapi_document(server: BifrostServer):
    """The OpenAPI document describes the HTTP API only: no page or static path."""
    paths = httpx.get(f"{server.url}/docs/openapi.json").json()["paths"]
    assert "/broadcast" in paths and "/info.json" in paths
    assert not [p for p in paths if p in PAGE_PATHS or p.startswith("/static")]


# sanic-ext's interactive pages of the OpenAPI document, which load scripts from a CDN.
API_PAGE_PATHS = ("/docs", "/docs/", "/docs/swagger", "/docs/redoc", "/docs/swagger-config")


def test_api_pages_are_404_outside_development(server: BifrostServer):
    """Outside development mode only the OpenAPI document is served under /docs: Swagger UI,
    ReDoc and their configuration answer 404 JSON."""
    for path in API_PAGE_PATHS:
        answer = httpx.get(f"{server.url}{path}")
        assert answer.status_code == 404, path
        assert answer.json()["error"], path
    document = httpx.get(f"{server.url}/docs/openapi.json")
    assert document.status_code == 200 and document.json()["info"]["title"] == "Bifröst"


def test_api_pages_are_served_in_development(dev_server: BifrostServer):
    """In development mode /docs/swagger and /docs/redoc are the interactive API pages."""
    for path, name in (("/docs/swagger", "swagger-ui"), ("/docs/redoc", "redoc")):
        answer = httpx.get(f"{dev_server.url}{path}")
        assert answer.status_code == 200, path
        assert answer.headers["content-type"].startswith("text/html")
        assert name in answer.text and "/docs/openapi.json" in answer.text


def test_development_status_page_links_the_playground(dev_server: BifrostServer):
    """In development mode the status page shows the link to the playground."""
    page = httpx.get(f"{dev_server.url}/").text
    assert '<p id="dev-link" >' in page and 'href="/test"' in page


def test_playground_tokens_subscribe_and_broadcast(dev_server: BifrostServer):
    """The playground's subscribe token subscribes; /broadcast accepts its broadcast token."""
    assert httpx.get(f"{dev_server.url}/test").status_code == 200
    grant = httpx.get(f"{dev_server.url}/test/token", params={"channel": "play:1"}).json()
    assert grant["channel"] == "play:1"
    with connect(dev_server.ws_url) as ws:
        ws.send(json.dumps({"event": "authenticate", "data": grant["token"]}))
        assert json.loads(json.loads(ws.recv(5))["data"]) == {"channel": "play:1"}
        body = {"channel": "play:1", "event": "hello", "data": '{"text": "hi"}'}
        signed = httpx.post(f"{dev_server.url}/test/broadcast-token", json=body).json()
        answer = httpx.post(f"{dev_server.url}/broadcast", json=signed).json()
        assert answer == {"message": "Success", "deliveries": 1}
        assert json.loads(ws.recv(5)) == {"event": "hello", "data": '{"text": "hi"}'}


def test_playground_default_channel(dev_server: BifrostServer):
    """Without ?channel= the playground's token grants the `playground` channel."""
    token = httpx.get(f"{dev_server.url}/test/token").json()["token"]
    assert jwt.decode(token, SECRET, ["HS512"]) == {"channels": ["playground"]}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json", "JSON"),
        ('["a list"]', "object"),
        ('{"channel": "a"}', "event"),
        ('{"channel": "", "event": "e"}', "channel"),
        (json.dumps({"channel": "c" * 256, "event": "e"}), "channel"),
    ],
)
def test_playground_refuses_bad_requests(dev_server: BifrostServer, body: str, reason: str):
    """A playground request that is not {channel, event, data} gets 400 with the reason."""
    answer = httpx.post(f"{dev_server.url}/test/broadcast-token", content=body)
    assert answer.status_code == 400 and reason in answer.json()["error"]


def test_playground_broadcast_claims():
    """A playground broadcast token is signed with the secret, HS512, and expires after 60 s."""
    token = playground_broadcast(
        Settings(jwt_secret=SECRET), {"channel": "c", "event": "e", "data": [1]}
    )
    assert jwt.get_unverified_header(token)["alg"] == "HS512"
    claims = jwt.decode(token, SECRET, ["HS512"])
    assert claims["channel"] == "c" and claims["message"] == {"event": "e", "data": [1]}
    assert abs(claims["exp"] - (time.time() + 60)) <= 2


@pytest.mark.parametrize(
    "settings_change",
    [
        lambda s: replace(s, jwt_algorithms=("RS256",)),
        lambda s: replace(s, jwt_secret=""),
    ],
)
def test_playground_needs_an_hmac_secret(settings_change: Callable[[Settings], Settings]):
    """A server that accepts no HMAC-signed token cannot sign for the playground, and says so."""
    settings = settings_change(Settings(jwt_secret=SECRET))
    with pytest.raises(PlaygroundRefusal, match="JWT_SECRET"):
        playground_broadcast(settings, {"channel": "c", "event": "e"})
