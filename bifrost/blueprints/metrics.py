"""`GET /metrics`: the service's figures in the Prometheus text format, over every worker.

The blueprint owns the life of the metrics: the main process makes the folder the workers
share (a single process cleans an operator's folder itself), each worker samples its gauges
once a second and marks itself dead when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from sanic import Blueprint, Request, Sanic
from sanic.response import HTTPResponse, raw
from sanic_ext import openapi

from bifrost import metrics
from bifrost.service import Service, context_of, service_of

__all__ = ["SAMPLE_INTERVAL", "metrics_bp"]

# How stale a gauge of another worker may be when a scrape is answered; a scrape is rarer.
SAMPLE_INTERVAL = 1.0

metrics_bp = Blueprint("metrics")


@metrics_bp.main_process_start
async def share_metrics_between_workers(app: Sanic[Any, Any]) -> None:
    """Give the workers, spawned after this, a folder to write their metrics to."""
    context_of(app).metrics_dir = metrics.prepare_multiprocess_dir()


@metrics_bp.main_process_stop
async def remove_shared_metrics(app: Sanic[Any, Any]) -> None:
    """Remove the folder, if the main process made it, once every worker has stopped."""
    metrics.remove_multiprocess_dir(context_of(app).metrics_dir)


@metrics_bp.before_server_start
async def forget_earlier_runs(app: Sanic[Any, Any]) -> None:
    """A single process with an operator's folder: earlier runs' counters must not be added in."""
    if metrics.is_multiprocess() and not metrics.prepared_by_main_process():
        metrics.forget_dead_processes()


@metrics_bp.after_server_start
async def start_sampling(app: Sanic[Any, Any]) -> None:
    """Keep this worker's gauges current for scrapes that another worker answers."""
    context_of(app).metrics_sampler = app.add_task(_sample_forever(service_of(app)))


@metrics_bp.after_server_stop
async def stop_sampling(app: Sanic[Any, Any]) -> None:
    """The sampler ended when the server began to stop; this worker's gauges now stop counting."""
    sampler = context_of(app).metrics_sampler
    if sampler is not None:
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    metrics.worker_stopped()


@metrics_bp.get("/metrics")
@openapi.exclude()
async def prometheus_metrics(request: Request) -> HTTPResponse:
    """Every worker's figures; this worker's gauges as of now, the others' within a second."""
    _sample(service_of(request.app))
    return raw(metrics.exposition(), content_type=metrics.CONTENT_TYPE)


async def _sample_forever(service: Service) -> None:
    """Sample once a second until the server begins to stop."""
    while True:
        _sample(service)
        try:
            await asyncio.wait_for(service.stopping.wait(), SAMPLE_INTERVAL)
            return
        except TimeoutError:
            pass


def _sample(service: Service) -> None:
    registry = service.registry
    metrics.sample(
        connected=registry.connected,
        event_streams=registry.event_streams,
        channels=registry.channel_count,
        subscriptions=registry.subscription_count,
        broker_available=service.broker.unavailable_reason() is None,
    )
