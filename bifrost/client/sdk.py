"""The Python SDK: mint subscribe tokens and broadcast from your application's server.

The defaults are those of the original service's Ruby gem: HS512, and broadcast tokens that
expire 60 seconds after they are signed, so a token caught in a log is soon worthless.
Configuration comes from `JWT_SECRET` and `BIFROST_URL`, or from arguments.
With history on, a broadcast's answer also says where the message stands in each channel
(`BroadcastAnswer.positions`), so that the application can store it with its own write.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import httpx
import jwt

from bifrost.rules.channels import channel_name
from bifrost.rules.positions import Position, parse_since, since_problem

__all__ = [
    "BROADCAST_TTL",
    "DEFAULT_ALGORITHM",
    "BifrostClient",
    "BifrostError",
    "BroadcastAnswer",
    "Position",
    "broadcast_claims",
    "token_for",
]

DEFAULT_ALGORITHM = "HS512"
BROADCAST_TTL = 60.0
DEFAULT_TIMEOUT = 10.0
HIGHEST_SUCCESS_STATUS = 206


class BifrostError(Exception):
    """Bifröst refused a broadcast or could not be reached.

    `status` is the HTTP status, or None when no answer came (the network failed); `error`
    is the server's reason, or what went wrong on the way.
    """

    def __init__(self, status: int | None, error: str, url: str) -> None:
        self.status = status
        self.error = error
        self.url = url
        if status is None:
            super().__init__(f"Bifröst at {url} could not be reached: {error}")
        else:
            super().__init__(f"Bifröst at {url} answered {status}: {error}")


class BroadcastAnswer(dict[str, Any]):
    """The server's JSON answer to a broadcast, as a dict (`answer["deliveries"]`), with its
    figures typed: `deliveries`, and `positions` when the server keeps history.
    """

    @property
    def deliveries(self) -> int:
        """The sockets the message was handed to, across every worker and node."""
        deliveries: int = self["deliveries"]
        return deliveries

    @property
    def positions(self) -> dict[str, Position] | None:
        """Where the message stands in each channel it was broadcast to; None when the server
        keeps no history (`BIFROST_HISTORY_SIZE` 0), which answers no positions.

        A value that is not an object of positions raises ValueError: the broadcast itself
        went through, so it is not a BifrostError.
        """
        positions = self.get("positions")
        if positions is None:
            return None
        problem = since_problem(positions)
        if problem is not None:
            raise ValueError(f"the answer's positions are not positions: {problem}")
        return parse_since(positions)


def token_for(
    channels: str | Sequence[str],
    ttl: float | None = None,
    secret: str | None = None,
    algorithm: str = DEFAULT_ALGORITHM,
) -> str:
    """A subscribe token for `channels`, for your application to hand to a browser.

    Without `ttl` it does not expire (a socket stays open after its token expires anyway;
    `exp` only limits when it may be presented). `secret` defaults to `JWT_SECRET`. A name
    the server would refuse raises ValueError here, before anything is signed.
    """
    claims: dict[str, Any] = {"channels": _channel_list(channels)}
    if ttl is not None:
        claims["exp"] = int(time.time() + ttl)
    return jwt.encode(claims, _secret(secret), algorithm)


def broadcast_claims(
    channel_or_channels: str | Sequence[str], event: str, data: Any, ttl: float | None
) -> dict[str, Any]:
    """The claims of a broadcast token: `channel` for one name, `channels` for a list.

    A name the server would refuse raises ValueError.
    """
    claims: dict[str, Any] = {"message": {"event": event, "data": data}}
    if isinstance(channel_or_channels, str):
        claims["channel"] = channel_name(channel_or_channels)
    else:
        claims["channels"] = _channel_list(channel_or_channels)
    if ttl is not None:
        claims["exp"] = int(time.time() + ttl)
    return claims


class BifrostClient:
    """Broadcasts to a Bifröst server, synchronously (`broadcast`) or not (`broadcast_async`).

    `url` defaults to `BIFROST_URL`, `secret` to `JWT_SECRET`. Each broadcast signs a fresh
    token valid for `ttl` seconds and answers the server's JSON, such as
    `{"message": "Success", "deliveries": 2}`, as a BroadcastAnswer; any status above 206, or
    no answer at all, raises BifrostError.
    """

    def __init__(
        self,
        url: str | None = None,
        secret: str | None = None,
        *,
        algorithm: str = DEFAULT_ALGORITHM,
        ttl: float | None = BROADCAST_TTL,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        url = url or os.environ.get("BIFROST_URL")
        if not url:
            raise ValueError("no Bifröst URL: pass url= or set BIFROST_URL")
        self.url = url.rstrip("/")
        self.secret = _secret(secret)
        self.algorithm = algorithm
        self.ttl = ttl
        self.timeout = timeout

    @property
    def broadcast_url(self) -> str:
        return f"{self.url}/broadcast"

    def token_for(self, channels: str | Sequence[str], ttl: float | None = None) -> str:
        """A subscribe token signed with this client's secret and algorithm."""
        return token_for(channels, ttl, self.secret, self.algorithm)

    def broadcast_token(
        self, channel_or_channels: str | Sequence[str], event: str, data: Any = None
    ) -> str:
        """The signed token that `broadcast` posts."""
        claims = broadcast_claims(channel_or_channels, event, data, self.ttl)
        return jwt.encode(claims, self.secret, self.algorithm)

    def broadcast(
        self, channel_or_channels: str | Sequence[str], event: str, data: Any = None
    ) -> BroadcastAnswer:
        """Send `{"event": event, "data": data}` to the channels; answer the server's JSON."""
        body = {"token": self.broadcast_token(channel_or_channels, event, data)}
        try:
            response = httpx.post(self.broadcast_url, json=body, timeout=self.timeout)
        except httpx.HTTPError as failure:
            raise BifrostError(None, _describe(failure), self.broadcast_url) from failure
        return _answer(response, self.broadcast_url)

    async def broadcast_async(
        self, channel_or_channels: str | Sequence[str], event: str, data: Any = None
    ) -> BroadcastAnswer:
        """`broadcast` for asyncio code: the same token, answer and errors."""
        body = {"token": self.broadcast_token(channel_or_channels, event, data)}
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as http:
                response = await http.post(self.broadcast_url, json=body)
        except httpx.HTTPError as failure:
            raise BifrostError(None, _describe(failure), self.broadcast_url) from failure
        return _answer(response, self.broadcast_url)


def _answer(response: httpx.Response, url: str) -> BroadcastAnswer:
    """The JSON of a successful answer; BifrostError with the server's reason otherwise."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code > HIGHEST_SUCCESS_STATUS:
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            reason = answer["error"]
        else:
            reason = response.text.strip() or response.reason_phrase
        raise BifrostError(response.status_code, reason, url)
    if not isinstance(answer, dict):
        raise BifrostError(response.status_code, "the answer is not a JSON object", url)
    return BroadcastAnswer(answer)


def _describe(failure: httpx.HTTPError) -> str:
    return str(failure) or type(failure).__name__


def _channel_list(channels: str | Sequence[str]) -> list[str]:
    """A list of names; one name given as a string is a list of one, not of its letters."""
    names = [channels] if isinstance(channels, str) else list(channels)
    return [channel_name(name) for name in names]


def _secret(secret: str | None) -> str:
    secret = secret or os.environ.get("JWT_SECRET")
    if not secret:
        raise ValueError("no JWT secret: pass secret= or set JWT_SECRET")
    return secret
