"""`GET /info.json`: the figures the original service reported, totals over every process."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json
from sanic_ext import openapi

from bifrost.blueprints.schemas import StatsAnswer
from bifrost.service import service_of

__all__ = ["stats_bp"]

stats_bp = Blueprint("stats")


@stats_bp.get("/info.json")
@openapi.response(200, {"application/json": StatsAnswer}, "Totals over every process")
async def info(request: Request) -> HTTPResponse:
    """Deliveries since start and open connections, then the channel figures, then how many
    of the connections are websockets and how many event streams."""
    totals = await service_of(request.app).broker.totals()
    return json(
        {
            "stats": {
                "deliveries": totals.deliveries,
                "connected": totals.connected,
                "channels": totals.channels,
                "subscriptions": totals.subscriptions,
                "websockets": totals.connected - totals.event_streams,
                "event_streams": totals.event_streams,
            }
        }
    )
