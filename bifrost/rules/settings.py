"""Every setting of Bifröst in one place, read from the environment and `.env`, checked at start-up.

A wrong setting must stop the service before it accepts a socket, with one line that names the
variable and says what to set: a typo found at three in the morning by a failed deploy is
cheaper than one found by users.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from dotenv import dotenv_values

from bifrost.rules.keys import (
    ASYMMETRIC_ALGORITHMS,
    HMAC_ALGORITHMS,
    KNOWN_ALGORITHMS,
    PublicKey,
    default_algorithm_for,
    read_public_key,
)

__all__ = [
    "MIN_SECRET_LENGTH",
    "RECOMMENDED_SECRET_LENGTH",
    "Settings",
    "SettingsError",
    "load_settings",
    "read_environment",
    "secret_length_warning",
    "with_checked_secret",
]

MIN_SECRET_LENGTH = 32
RECOMMENDED_SECRET_LENGTH = 64

# A count or a number of seconds: whatever can be compared with zero.
Number = TypeVar("Number", int, float)


class SettingsError(Exception):
    """A setting that stops start-up; its text is the one line the operator reads."""


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective configuration of one Bifröst process, every default visible here."""

    jwt_secret: str = ""
    jwt_secret_previous: str = ""
    jwt_public_key: PublicKey | None = None
    jwt_algorithms: tuple[str, ...] = ("HS512",)
    require_exp: bool = True
    auth_timeout: float = 10.0
    ping_interval: float = 30.0
    idle_timeout: float = 60.0
    max_frame_bytes: int = 65536
    max_message_bytes: int = 65536
    max_channels: int = 100
    max_pending_bytes: int = 1024 * 1024
    max_frames_per_second: float = 20.0
    max_connections: int = 10000
    allowed_origins: frozenset[str] = field(default_factory=frozenset)
    redis_url: str | None = None
    redis_prefix: str = "bifrost:"
    log_format: str = "text"
    secret_is_throwaway: bool = False

    def public_summary(self) -> dict[str, object]:
        """The settings worth logging at start-up, with every secret left out."""
        return {
            "jwt_algorithms": ",".join(self.jwt_algorithms),
            "jwt_public_key": type(self.jwt_public_key).__name__ if self.jwt_public_key else None,
            "jwt_secret_previous": bool(self.jwt_secret_previous),
            "require_exp": self.require_exp,
            "auth_timeout": self.auth_timeout,
            "ping_interval": self.ping_interval,
            "idle_timeout": self.idle_timeout,
            "max_frame_bytes": self.max_frame_bytes,
            "max_message_bytes": self.max_message_bytes,
            "max_channels": self.max_channels,
            "max_pending_bytes": self.max_pending_bytes,
            "max_frames_per_second": self.max_frames_per_second,
            "max_connections": self.max_connections,
            "allowed_origins": ",".join(sorted(self.allowed_origins)) or "any",
            "broker": "redis" if self.redis_url else "in-process",
            "log_format": self.log_format,
        }


def read_environment(env_file: Path = Path(".env")) -> dict[str, str]:
    """The process environment over the `.env` file of the working folder (the environment wins)."""
    from_file = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    return {**from_file, **os.environ}


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build and validate the settings; raise SettingsError naming the first wrong variable.

    The secret is only read here: whether a missing one is an error depends on the run mode,
    which `with_checked_secret` decides once the mode is known.
    """
    reader = _Reader(environ)
    public_key = reader.public_key("BIFROST_JWT_PUBLIC_KEY")
    settings = Settings(
        jwt_secret=environ.get("JWT_SECRET", ""),
        jwt_secret_previous=environ.get("JWT_SECRET_PREVIOUS", ""),
        jwt_public_key=public_key,
        jwt_algorithms=reader.algorithms("BIFROST_JWT_ALGORITHMS", public_key),
        require_exp=reader.boolean("BIFROST_REQUIRE_EXP", True),
        auth_timeout=reader.positive("BIFROST_AUTH_TIMEOUT", 10.0, float),
        ping_interval=reader.positive("BIFROST_PING_INTERVAL", 30.0, float),
        idle_timeout=reader.positive("BIFROST_IDLE_TIMEOUT", 60.0, float),
        max_frame_bytes=reader.positive("BIFROST_MAX_FRAME_BYTES", 65536, int),
        max_message_bytes=reader.positive("BIFROST_MAX_MESSAGE_BYTES", 65536, int),
        max_channels=reader.positive("BIFROST_MAX_CHANNELS", 100, int),
        max_pending_bytes=reader.positive("BIFROST_MAX_PENDING_BYTES", 1024 * 1024, int),
        max_frames_per_second=reader.positive("BIFROST_MAX_FRAMES_PER_SECOND", 20.0, float),
        max_connections=reader.positive("BIFROST_MAX_CONNECTIONS", 10000, int),
        allowed_origins=reader.origins("BIFROST_ALLOWED_ORIGINS"),
        redis_url=reader.redis_url("BIFROST_REDIS_URL"),
        redis_prefix=environ.get("BIFROST_REDIS_PREFIX", "bifrost:"),
        log_format=reader.choice("BIFROST_LOG_FORMAT", ("text", "json")),
    )
    if settings.idle_timeout <= settings.ping_interval:
        raise SettingsError(
            "BIFROST_IDLE_TIMEOUT must be longer than BIFROST_PING_INTERVAL "
            f"(got {settings.idle_timeout:g} and {settings.ping_interval:g} seconds), "
            "so that a silent client has time to answer a ping"
        )
    return settings


def with_checked_secret(settings: Settings, *, development: bool) -> Settings:
    """Refuse a missing or short secret, except in development where a throwaway one is made.

    A deployment that accepts only public-key algorithms needs no secret at all.
    """
    secret = settings.jwt_secret
    if not HMAC_ALGORITHMS.intersection(settings.jwt_algorithms):
        return settings
    if settings.jwt_secret_previous and len(settings.jwt_secret_previous) < MIN_SECRET_LENGTH:
        raise SettingsError(
            f"JWT_SECRET_PREVIOUS is {len(settings.jwt_secret_previous)} characters: set the "
            f"secret being rotated out, at least {MIN_SECRET_LENGTH}, or leave it unset"
        )
    if not secret and development:
        throwaway = secrets.token_urlsafe(RECOMMENDED_SECRET_LENGTH)
        return replace(settings, jwt_secret=throwaway, secret_is_throwaway=True)
    if not secret:
        raise SettingsError(
            "JWT_SECRET is not set: set it to the secret your application signs tokens "
            f"with, at least {MIN_SECRET_LENGTH} characters ({RECOMMENDED_SECRET_LENGTH} "
            "or more recommended for HS512)"
        )
    if len(secret) < MIN_SECRET_LENGTH:
        raise SettingsError(
            f"JWT_SECRET is {len(secret)} characters: set one of at least "
            f"{MIN_SECRET_LENGTH} ({RECOMMENDED_SECRET_LENGTH} or more recommended for HS512)"
        )
    return settings


def secret_length_warning(settings: Settings) -> str | None:
    """The warning for a secret shorter than recommended, when HMAC tokens verify with it.

    A deployment that accepts only public-key algorithms never uses `JWT_SECRET`, so its
    length, or its absence, is nothing to warn about.
    """
    if not HMAC_ALGORITHMS.intersection(settings.jwt_algorithms):
        return None
    length = len(settings.jwt_secret)
    if length >= RECOMMENDED_SECRET_LENGTH:
        return None
    return (
        f"JWT_SECRET has {length} characters; "
        f"{RECOMMENDED_SECRET_LENGTH} or more are recommended for HS512"
    )


class _Reader:
    """Parses single variables, each failure phrased as what to set."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def algorithms(self, name: str, public_key: PublicKey | None) -> tuple[str, ...]:
        """The pinned algorithms: by default HS512, and the public key's own when one is set."""
        if public_key is None:
            default = "HS512"
        else:
            own = default_algorithm_for(public_key)
            default = f"HS512,{own}" if self.environ.get("JWT_SECRET") else own
        raw = self.environ.get(name) or default
        names = tuple(a.strip() for a in raw.split(",") if a.strip())
        unknown = [a for a in names if a not in KNOWN_ALGORITHMS]
        if unknown or not names:
            raise SettingsError(
                f"{name}={raw!r} names no usable algorithm ({', '.join(unknown) or 'empty'}): "
                f"set a comma-separated list of {', '.join(sorted(KNOWN_ALGORITHMS))}"
            )
        keyless = [a for a in names if a in ASYMMETRIC_ALGORITHMS and public_key is None]
        if keyless:
            raise SettingsError(
                f"{name} names {', '.join(keyless)}, which verify with a public key: "
                "set BIFROST_JWT_PUBLIC_KEY to its PEM text or file path"
            )
        return names

    def redis_url(self, name: str) -> str | None:
        raw = self.environ.get(name, "").strip()
        if raw and not raw.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(
                f"{name} must start with redis://, rediss:// or unix://: "
                "set e.g. redis://127.0.0.1:6379/0"
            )
        return raw or None

    def public_key(self, name: str) -> PublicKey | None:
        raw = self.environ.get(name, "").strip()
        if not raw:
            return None
        try:
            return read_public_key(raw)
        except ValueError as error:
            raise SettingsError(
                f"{name} {error}: set the PEM text of the public key or the path of its file"
            ) from None

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.environ.get(name)
        if raw is None or raw == "":
            return default
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise SettingsError(f"{name}={raw!r} is not a boolean: set it to true or false")

    def positive(self, name: str, default: Number, kind: Callable[[str], Number]) -> Number:
        raw = self.environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = kind(raw.strip())
        except ValueError:
            value = None
        if value is None or not value > 0:
            unit = "whole number" if kind is int else "number"
            raise SettingsError(f"{name}={raw!r} is not a positive {unit}: set e.g. {default}")
        return value

    def choice(self, name: str, options: tuple[str, ...]) -> str:
        """One of `options`, the first by default."""
        raw = self.environ.get(name) or options[0]
        if raw.strip().lower() not in options:
            raise SettingsError(f"{name}={raw!r} is not known: set one of {', '.join(options)}")
        return raw.strip().lower()

    def origins(self, name: str) -> frozenset[str]:
        raw = self.environ.get(name, "")
        return frozenset(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
