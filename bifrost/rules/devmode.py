"""The first minutes of a new user: in development, a ready token, a command that broadcasts,
and where the status page and the playground are.

Development tokens are signed here with `JWT_SECRET` (or the throwaway one), so the algorithm
that signs them is chosen here once, for the banner and the playground alike.
"""

from __future__ import annotations

import time

import jwt

from bifrost.rules.keys import HMAC_ALGORITHMS
from bifrost.rules.settings import Settings

__all__ = ["DEMO_CHANNEL", "NoSigningAlgorithm", "first_steps", "pages_line", "signing_algorithm"]

DEMO_CHANNEL = "global"


class NoSigningAlgorithm(Exception):
    """The server accepts no token that its own secret can sign; the text says what to set."""


def signing_algorithm(settings: Settings) -> str:
    """The first accepted HMAC algorithm: development tokens are signed with the secret, never
    with an algorithm that needs a private key the server does not have."""
    if settings.jwt_secret:
        for algorithm in settings.jwt_algorithms:
            if algorithm in HMAC_ALGORITHMS:
                return algorithm
    raise NoSigningAlgorithm(
        "this server accepts no HMAC-signed token (no JWT_SECRET), so it cannot sign one: "
        "add HS512 to BIFROST_JWT_ALGORITHMS and set JWT_SECRET"
    )


def pages_line(base_url: str) -> str:
    """Where a developer watches the server and tries a broadcast from a form."""
    return f"Status page: {base_url}/   Playground: {base_url}/test"


def first_steps(settings: Settings, base_url: str) -> str:
    """Log text showing how to subscribe and broadcast against this development server."""
    algorithm = signing_algorithm(settings)
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
            f"3. {pages_line(base_url)}",
        ]
    )
