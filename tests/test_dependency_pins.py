"""Pins of what Bifröst relies on inside its dependencies, beyond their documented API.

Each test names one reach into a dependency's private or undocumented parts and fails when an
upgrade moves it, so that the upgrade is caught here, with the reach named, rather than as a
timeout in a live test. The `# type: ignore[no-untyped-call]` comments on calls into
unannotated dependencies are pinned by mypy itself: strict mode warns of an unused ignore, so
the README's test command fails once the dependency ships types.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from jwt.algorithms import HMACAlgorithm
from jwt.api_jws import PyJWS
from prometheus_client import values
from sanic import Sanic
from sanic.http import Http, Stage
from sanic.server import HttpProtocol
from sanic.worker.manager import WorkerManager
from sanic_ext.config import Config as OpenAPIConfig
from sanic_ext.extensions.openapi.blueprint import blueprint_factory
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from bifrost.blueprints.pages import OPENAPI_DOCUMENT_ROUTE
from bifrost.rules.tokens import TokenVerifier

SECRET = "pin-secret-" + "x" * 60


def _slots(cls: type) -> set[str]:
    """Every slot of the class and its bases."""
    return {slot for klass in cls.__mro__ for slot in getattr(klass, "__slots__", ())}


def _parameters(function: Callable[..., object]) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_pyjwt_instance_keeps_its_own_algorithm_registry():
    """`PyJWT()._jws` is the instance's own PyJWS: an HMAC registered there verifies its
    decodes, calling `prepare_key` per token, and leaves the module's `jwt.decode` alone."""
    instance = jwt.PyJWT()
    assert isinstance(instance._jws, PyJWS)
    assert _parameters(PyJWS.register_algorithm) == ["self", "alg_id", "alg_obj"]
    assert _parameters(PyJWS.unregister_algorithm) == ["self", "alg_id"]
    prepared: list[object] = []

    class Counting(HMACAlgorithm):
        def prepare_key(self, key: str | bytes) -> bytes:
            prepared.append(key)
            return super().prepare_key(key)

    instance._jws.unregister_algorithm("HS512")
    instance._jws.register_algorithm("HS512", Counting(HMACAlgorithm.SHA512))
    token = jwt.encode({"channels": ["a"]}, SECRET, algorithm="HS512")
    assert instance.decode(token, SECRET, algorithms=["HS512"]) == {"channels": ["a"]}
    assert prepared == [SECRET]
    assert jwt.decode(token, SECRET, algorithms=["HS512"]) == {"channels": ["a"]}
    assert prepared == [SECRET]


def test_token_verifier_replaces_hmac_in_its_own_registry_only():
    """`TokenVerifier` swaps pyjwt's HMAC for its prepared one in its own `PyJWT` only."""
    verifier = TokenVerifier([SECRET], algorithms=("HS512",))
    token = jwt.encode({"channels": ["room"]}, SECRET, algorithm="HS512")
    assert verifier.subscribe_channels(token) == ["room"]
    mine = verifier._jwt._jws._algorithms["HS512"]
    assert type(mine).__name__ == "_PreparedHMAC"
    assert type(jwt.PyJWT()._jws._algorithms["HS512"]) is HMACAlgorithm


def test_pyjwt_decodes_the_payload_through_its_hook():
    """`PyJWT._decode_payload` (pyjwt's hook for decoding the payload otherwise) is what
    `decode` reads the claims with: `TokenVerifier` reads them with orjson there."""
    decoded: list[object] = []

    class Counting(jwt.PyJWT):
        def _decode_payload(self, parts: dict[str, Any]) -> dict[str, Any]:
            decoded.append(parts["payload"])
            return super()._decode_payload(parts)

    token = jwt.encode({"channels": ["a"]}, SECRET, algorithm="HS512")
    assert Counting().decode(token, SECRET, algorithms=["HS512"]) == {"channels": ["a"]}
    assert decoded == [b'{"channels":["a"]}']


def test_sanic_http_protocol_slots_used_by_the_handover():
    """`bifrost.handshake` reads `recv_buffer`, drops the protocol from `connections` and sets
    `transport` to None; `close()` then only cancels the timeout timer (served pipelined
    frames: test_wire)."""
    assert {"recv_buffer", "connections", "transport", "_http", "_task"} <= _slots(HttpProtocol)
    assert "self.connections.add(self)" in inspect.getsource(HttpProtocol.connection_made)
    assert "self.recv_buffer += data" in inspect.getsource(HttpProtocol.data_received)
    loop = asyncio.new_event_loop()
    try:
        released = object.__new__(HttpProtocol)
        released.transport = None
        released._callback_check_timeouts = timer = loop.call_later(60, lambda: None)
        assert released.close() is None  # past the transport it would touch unset slots
        assert timer.cancelled()
    finally:
        loop.close()


def test_sanic_http_class_and_request_cycle():
    """`bifrost.bounded_http` subclasses `Http` as `HTTP_CLASS`, which Sanic builds with the
    protocol and resets by `init_for_request()` at the start of every request cycle."""
    assert HttpProtocol.HTTP_CLASS is Http
    assert "self.HTTP_CLASS(self" in inspect.getsource(HttpProtocol._setup_connection)
    assert _parameters(Http.__init__) == ["self", "protocol"]
    assert _parameters(Http.init_for_request) == ["self"]
    assert "self.init_for_request()" in inspect.getsource(Http.http1)
    assert {"protocol", "stage", "request_body", "exception", "keep_alive"} <= _slots(Http)
    assert {Stage.IDLE, Stage.REQUEST, Stage.HANDLER} <= set(Stage)


def test_sanic_check_timeouts_and_connection_made():
    """`BoundedHttpProtocol` overrides `check_timeouts()` (Sanic's timer calls it) and
    `connection_made(transport)`, keeping their signatures."""
    assert _parameters(HttpProtocol.check_timeouts) == ["self"]
    assert _parameters(HttpProtocol.connection_made) == ["self", "transport"]
    assert "self.check_timeouts" in inspect.getsource(HttpProtocol.check_timeouts)
    assert "request_timeout" in _slots(HttpProtocol)


def test_sanic_handler_marked_as_websocket_returns_nothing():
    """`/subscribe` answers by upgrading and returns None: Sanic accepts that only from a
    handler carrying `is_websocket`."""
    assert inspect.getsource(Sanic.handle_request).count('hasattr(handler, "is_websocket")') == 2


def test_sanic_expects_no_answer_once_the_request_is_marked_upgraded():
    """An event stream's handler writes its own head and returns None, its request marked as
    upgraded (`bifrost.handshake`): Sanic then writes no "no response" error after it; and
    its access line quotes the URL, which `bifrost.logs` redacts."""
    assert "upgrade_websocket" in _slots(Http)
    assert "self.stage is Stage.HANDLER and not self.upgrade_websocket" in inspect.getsource(
        Http.http1
    )
    assert 'extra["request"] = f"{req.method} {req.url}"' in inspect.getsource(Http.log_response)


def test_sanic_worker_manager_handles_stop_signals():
    """`bifrost.signals` hands HUP and QUIT to the worker manager's handler of INT and TERM,
    a signal handler taking `(signal, frame)`."""
    assert isinstance(Sanic.manager, property)
    assert _parameters(WorkerManager.shutdown_signal) == ["self", "signal", "frame"]
    assert "self.shutdown()" in inspect.getsource(WorkerManager.shutdown_signal)


def test_sanic_ext_openapi_route_names():
    """`bifrost.blueprints.pages` tells sanic-ext's pages by route name: all start `openapi.`,
    and `openapi.spec` is the document (served in production: test_pages)."""
    app = Sanic("dependency_pins")
    app.blueprint(blueprint_factory(OpenAPIConfig()))
    routes = {
        route.name.removeprefix("dependency_pins."): route.path for route in app.router.routes
    }
    assert routes[OPENAPI_DOCUMENT_ROUTE] == "docs/openapi.json"
    assert all(name.startswith("openapi.") for name in routes)
    assert {"docs/swagger", "docs/redoc"} <= set(routes.values())


def test_websockets_open_parser_yields_frames_only():
    """A `ServerProtocol` made in `State.OPEN` parses frames straight away, never a handshake
    event: `bifrost.connection` treats what it receives as frames."""
    ws = ServerProtocol(state=State.OPEN)
    masked_hello = bytes([0x81, 0x85, 1, 2, 3, 4]) + bytes(
        b ^ (1, 2, 3, 4)[i % 4] for i, b in enumerate(b"hello")
    )
    ws.receive_data(masked_hello)
    events = ws.events_received()
    assert [type(event) for event in events] == [Frame]
    assert isinstance(events[0], Frame) and events[0].opcode is Opcode.TEXT


def test_prometheus_value_class_tells_multiprocess_mode(tmp_path: Path):
    """`bifrost.metrics.is_multiprocess` compares `values.ValueClass` with `MutexValue`, and
    reads a file's process from its name (`counter_<pid>.db`)."""
    assert values.get_value_class() is values.MutexValue
    script = (
        "import os, prometheus_client, prometheus_client.values as v\n"
        "assert v.ValueClass is not v.MutexValue\n"
        "prometheus_client.Counter('pinned', 'pinned').inc()\n"
        "print(os.getpid())\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    ran = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert [path.name for path in tmp_path.iterdir()] == [f"counter_{ran.stdout.strip()}.db"]
