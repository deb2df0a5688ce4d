"""HS512 tokens as Bifröst's users mint them: subscribe tokens for clients, broadcast tokens.

The generator signs its own tokens with the same secret the servers get, so that both servers
verify identical work: one signature per authenticate and one per broadcast.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

__all__ = ["ALGORITHM", "broadcast_token", "new_secret", "subscribe_token"]

ALGORITHM = "HS512"
BROADCAST_LIFETIME_S = 3600


def new_secret() -> str:
    """A fresh 64-character secret, the length the original README advises for HS512."""
    import secrets

    return secrets.token_urlsafe(48)


def subscribe_token(secret: str, channels: list[str], subject: str) -> str:
    """A client's token: its channels, and a subject so that no two clients share a token."""
    return jwt.encode({"channels": channels, "sub": subject}, secret, algorithm=ALGORITHM)


def broadcast_token(secret: str, channel: str, message: dict[str, Any]) -> str:
    """A server-side broadcast token for one channel, expiring as the README's example does."""
    claims = {
        "channel": channel,
        "message": message,
        "exp": int(time.time()) + BROADCAST_LIFETIME_S,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
