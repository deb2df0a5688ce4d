"""`GET /healthz` and `GET /readyz`: whether the process serves, and whether it can deliver.

Liveness and readiness differ on purpose: a worker that has lost Redis must not be restarted
(its sockets stay connected and it reconnects by itself), but a load balancer should send
broadcasts elsewhere until it is back.
"""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json
from sanic_ext import openapi

from bifrost.service import service_of

__all__ = ["health_bp"]

health_bp = Blueprint("health")


@health_bp.get("/healthz")
@openapi.exclude()
async def healthz(request: Request) -> HTTPResponse:
    """The process serves HTTP: nothing to restart."""
    return json({"status": "ok"})


@health_bp.get("/readyz")
@openapi.exclude()
async def readyz(request: Request) -> HTTPResponse:
    """The process can deliver broadcasts now: its broker is reachable and it is not stopping."""
    service = service_of(request.app)
    if service.stopping.is_set():
        reason: str | None = "service restarting"
    else:
        reason = service.broker.unavailable_reason()
    if reason is None:
        return json({"status": "ready"})
    return json({"status": "unavailable", "reason": reason}, status=503)
