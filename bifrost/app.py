"""The Sanic application: blueprints, settings and the listeners of the app's own state.

`sanic bifrost.app` serves the module-level `app`; tests and embedders call `create_app`.
Nothing stateful happens at import, because Sanic imports this module afresh in each worker:
the registry, the broker and the reaper are created when a worker's server starts, and let go
of when it stops, after the blueprints have closed what they made with them (the subscribe
blueprint its sockets, with 1012).
"""

from __future__ import annotations

import asyncio
import logging
import os
from functools import partial
from typing import Any, NoReturn

import orjson
from sanic import Sanic

from bifrost import __version__
from bifrost.application import BifrostSanic
from bifrost.blueprints import all_blueprints
from bifrost.blueprints.pages import api_pages_in_development_only
from bifrost.brokers.base import Broker, HistoryLimits
from bifrost.brokers.local import LocalBroker
from bifrost.collector import settle_collector
from bifrost.errors import JSONErrorHandler
from bifrost.limits import raise_open_file_limit, widen_accept_queues
from bifrost.logs import configure_logging, redact_query_tokens, sanic_log_config
from bifrost.reaper import reap_idle_sockets
from bifrost.rules.admission import REFUSAL_HEADROOM
from bifrost.rules.devmode import first_steps
from bifrost.rules.protocol import TRY_AGAIN_LATER
from bifrost.rules.registry import ChannelRegistry
from bifrost.rules.settings import (
    LOCAL_HOST,
    SERVE_DEFAULTS,
    Settings,
    SettingsError,
    load_settings,
    read_environment,
    secret_length_warning,
    with_checked_secret,
)
from bifrost.rules.tokens import TokenVerifier
from bifrost.service import BifrostContext, Service, context_of, service_of
from bifrost.signals import (
    ignore_signals_while_stopping,
    release_stop_signals,
    stop_server_on_signals,
    stop_workers_on_signals,
)
from bifrost.subscribers import Connected

__all__ = ["app", "create_app"]

logger = logging.getLogger("bifrost")

TOKEN_OVERHEAD_BYTES = 16 * 1024
# How long an HTTP connection may wait idle for its next request after an answer, unless
# Sanic's own SANIC_KEEP_ALIVE_TIMEOUT says otherwise: a client that reuses connections sends
# its next request at once, and an idle connection holds a file descriptor.
KEEP_ALIVE_SECONDS = 5
# Sanic runs the listeners of a server's stop by ascending priority (those of its start by
# descending): below every blueprint's, the service begins to stop before they close anything.
BEGIN_STOPPING_PRIORITY = -100
# The accept queue Sanic listens with.
SANIC_BACKLOG = 100


def create_app(settings: Settings | None = None, name: str = "bifrost") -> Sanic[Any, Any]:
    """Build the application from `settings`, or from the environment and `.env` when None."""
    settings = settings or load_settings(read_environment())
    configure_logging(settings.log_format)
    app = BifrostSanic(
        name,
        dumps=dump_json,
        loads=orjson.loads,
        error_handler=JSONErrorHandler(),
        log_config=sanic_log_config(settings.log_format),
        ctx=BifrostContext(settings),
    )
    redact_query_tokens()
    _configure_sanic(app, settings)
    app.blueprint(all_blueprints)
    app.on_request(api_pages_in_development_only)
    app.main_process_start(release_stop_signals)
    app.main_process_start(check_start_up)
    app.main_process_ready(stop_workers_on_signals)
    app.before_server_start(stop_server_on_signals)
    app.before_server_start(open_service)
    app.after_server_start(widen_accept_queue)
    app.after_server_start(settle_garbage_collector)
    app.before_server_stop(begin_stopping, priority=BEGIN_STOPPING_PRIORITY)
    app.before_server_stop(close_service)
    return app


def dump_json(value: Any) -> bytes:
    """JSON for responses; the OpenAPI document keys its responses by status number."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def _configure_sanic(app: Sanic[Any, Any], settings: Settings) -> None:
    """Hand Sanic the limits it enforces itself, and the OpenAPI description's heading."""
    if "SANIC_KEEP_ALIVE_TIMEOUT" not in os.environ:
        app.config.KEEP_ALIVE_TIMEOUT = KEEP_ALIVE_SECONDS
    app.config.update(
        {
            # A token carries its message in base64, a third larger than the JSON; any body
            # beyond twice the message limit holds a message over it.
            "REQUEST_MAX_SIZE": 2 * settings.max_message_bytes + TOKEN_OVERHEAD_BYTES,
            # A request has as long to arrive, head and body, as a socket has to authenticate:
            # measured from the connection's opening or its previous answer
            # (`bifrost.bounded_http`), not from the last byte received.
            "REQUEST_TIMEOUT": settings.auth_timeout,
            "API_TITLE": "Bifröst",
            "API_VERSION": __version__,
            "API_DESCRIPTION": "Realtime broadcasts to websocket subscribers, authorised by JWTs.",
        }
    )


async def check_start_up(app: Sanic[Any, Any]) -> None:
    """Refuse a wrong configuration in the main process, before any worker is spawned.

    A throwaway development secret is made here and put in the environment, which the
    workers inherit, so that every worker and every auto-reload accepts the same tokens.
    """
    settings = _checked_settings(app)
    if app.state.workers > 1 and not settings.redis_url:
        _refuse_start(
            f"{app.state.workers} workers need a broker between them: set BIFROST_REDIS_URL "
            "(e.g. redis://127.0.0.1:6379/0) or run one worker"
        )
    if settings.secret_is_throwaway:
        os.environ["JWT_SECRET"] = settings.jwt_secret


async def open_service(app: Sanic[Any, Any]) -> None:
    """Create this worker's registry, broker and token rules, and start its reaper."""
    settings = _checked_settings(app)
    raise_open_file_limit(settings.max_connections)
    # Frames of one loop turn go out in one write per socket, at the end of the turn.
    registry: ChannelRegistry[Connected] = ChannelRegistry(asyncio.get_running_loop().call_soon)
    broker = _make_broker(settings, registry)
    await broker.start()
    verifier = TokenVerifier.from_settings(settings)
    context = context_of(app)
    service = context.service = Service(settings, registry, broker, verifier)
    context.reaper = app.add_task(reap_idle_sockets(registry, settings, service.stopping))


async def widen_accept_queue(app: Sanic[Any, Any]) -> None:
    """Queue as many connections on the listening socket as the process may hold, those it
    answers 503 included, so that a reconnect storm waits in the kernel instead of being
    dropped (`bifrost.limits`); never fewer than Sanic's own queue."""
    held = service_of(app).settings.max_connections + REFUSAL_HEADROOM
    if not widen_accept_queues(max(held, SANIC_BACKLOG)):
        logger.warning("no listening socket found: the accept queue stays at Sanic's 100")


async def settle_garbage_collector(app: Sanic[Any, Any]) -> None:
    """Once the worker has started, leave what start-up made out of later collections
    (`bifrost.collector`)."""
    settle_collector()


def _checked_settings(app: Sanic[Any, Any]) -> Settings:
    """The settings with their secret checked for the run mode, said once in the log.

    Runs in the main process and again in each worker, which imports the module afresh
    (with `--single-process` only the latter happens).
    """
    context = context_of(app)
    settings = context.settings
    if context.settings_checked:
        return settings
    try:
        settings = with_checked_secret(settings, development=app.state.is_debug)
    except SettingsError as error:
        _refuse_start(str(error))
    if settings.secret_is_throwaway:
        logger.warning(first_steps(settings, _base_url(app)))
    elif (warning := secret_length_warning(settings)) is not None:
        logger.warning(warning)
    logger.info("bifrost settings: %s", settings.public_summary())
    context.settings = settings
    context.settings_checked = True
    return settings


def _refuse_start(reason: str) -> NoReturn:
    logger.error("bifrost cannot start: %s", reason)
    raise SystemExit(1)


async def begin_stopping(app: Sanic[Any, Any]) -> None:
    """First when the server stops: no signal may cut it short, and broadcasts, handshakes
    and the reaper see that the service is stopping."""
    ignore_signals_while_stopping()
    service_of(app).stopping.set()


async def close_service(app: Sanic[Any, Any]) -> None:
    """Last when the server stops, once the blueprints have closed their sockets: wait for the
    reaper to end, then let go of the broker."""
    context = context_of(app)
    if context.reaper is not None:
        await context.reaper
    await service_of(app).broker.stop()


def _make_broker(settings: Settings, registry: ChannelRegistry[Connected]) -> Broker:
    """Redis when configured, imported only then; otherwise the in-process broker.

    Either is handed the registry's fan-out and figures, never the registry itself.
    """
    history = None
    if settings.history_size:
        history = HistoryLimits(settings.history_size, settings.history_ttl)
    if settings.redis_url:
        from bifrost.brokers.redis import RedisBroker

        return RedisBroker(
            settings.redis_url,
            settings.redis_prefix,
            registry.deliver,
            registry.figures,
            history,
            interrupted=partial(_close_positioned, registry),
        )
    return LocalBroker(registry.deliver, registry.figures, history)


def _close_positioned(registry: ChannelRegistry[Connected]) -> None:
    """Live delivery stopped: tell positioned sockets to come back (1013), so that they
    recover what is published meanwhile instead of missing it unawares. Unpositioned sockets
    stay, as they always have: they could not recover it anyway."""
    closing = [s for s in registry.listeners() if s.positioned]
    if closing:
        logger.warning("closing %d positioned sockets to recover elsewhere", len(closing))
    for subscriber in closing:
        subscriber.close(TRY_AGAIN_LATER)


def _base_url(app: Sanic[Any, Any]) -> str:
    host = app.state.host or LOCAL_HOST
    port = app.state.port or SERVE_DEFAULTS.port
    return f"http://{host}:{port}"


try:
    app = create_app()
except SettingsError as error:
    raise SystemExit(f"bifrost cannot start: {error}") from None
