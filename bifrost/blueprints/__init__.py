"""The HTTP and websocket surface: one blueprint per endpoint family."""

from __future__ import annotations

from sanic import Blueprint

from bifrost.blueprints.broadcast import broadcast_bp
from bifrost.blueprints.health import health_bp
from bifrost.blueprints.metrics import metrics_bp
from bifrost.blueprints.pages import pages_bp
from bifrost.blueprints.stats import stats_bp
from bifrost.blueprints.subscribe import subscribe_bp

__all__ = ["all_blueprints"]

all_blueprints = Blueprint.group(
    subscribe_bp, broadcast_bp, stats_bp, pages_bp, metrics_bp, health_bp
)
