"""The first minute of a new user: in development, a ready token and a command that broadcasts."""

from __future__ import annotations

import time

import jwt

from bifrost.settings import Settings

__all__ = ["first_steps"]

DEMO_CHANNEL = "global"


def first_steps(settings: Settings, base_url: str) -> str:
    """Log text showing how to subscribe and broadcast against this development server."""
    algorithm = settings.jwt_algorithms[0]
    subscribe = jwt.encode({"channels": [DEMO_CHANNEL]}, settings.jwt_secret, algorithm)
    broadcast = jwt.encode(
        {
            "channel": DEMO_CHANNEL,
            "message": {"event": "hello", "data": '{"text":"Hello from Bifröst"}'},
            "exp": int(time.time()) + 24 * 3600,
        },
        settings.jwt_secret,
        algorithm,
    )
    ws_url = base_url.replace("http", "ws", 1) + "/subscribe"
    auth = f'{{"event":"authenticate","data":"{subscribe}"}}'
    return "\n".join(
        [
            "Development mode: no JWT_SECRET set, so a throwaway secret signs the tokens below;",
            "set JWT_SECRET to your application's secret to use real tokens.",
            f"1. Subscribe to {DEMO_CHANNEL!r}: python -m websockets {ws_url}",
            f"   then send: {auth}",
            "2. Broadcast to it (valid 24 h):",
            f'   curl -s -X POST {base_url}/broadcast -d \'{{"token":"{broadcast}"}}\'',
        ]
    )
