"""Every setting of Bifröst in one place, read from the environment and `.env`, checked at start-up.

Each default is written once, in `Settings` and `ServeOptions`: the loaders read them from
there. `ServeOptions` are the start commands' (`python -m bifrost`, `bifrost serve`), which
Sanic's runner takes before any worker, and so any `Settings`, exists.

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
from bifrost.rules.text import printable

__all__ = [
    "DEFAULTS",
    "LOCAL_HOST",
    "MIN_SECRET_LENGTH",
    "RECOMMENDED_SECRET_LENGTH",
    "SERVE_DEFAULTS",
    "ServeOptions",
    "Settings",
    "SettingsError",
    "load_settings",
    "port_number",
    "read_environment",
    "secret_length_warning",
    "serve_options",
    "with_checked_secret",
    "worker_count",
]

MIN_SECRET_LENGTH = 32
RECOMMENDED_SECRET_LENGTH = 64
LOG_FORMATS = ("text", "json")
# History is for reconnects, not an archive: bounds that keep a typo from exhausting memory.
MAX_HISTORY_SIZE = 100_000
MAX_HISTORY_TTL = 30 * 24 * 3600.0
# How much of a wrong start option a refusal quotes.
QUOTED_LENGTH = 40

Number = TypeVar("Number", int, float)
# Where `bifrost serve`, the command a developer runs, listens unless told: this machine only,
# since a development server's playground signs tokens for whoever reaches it.
LOCAL_HOST = "127.0.0.1"


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
    # Messages kept per channel for recovery (0: no history), and for how long after the
    # channel's last message.
    history_size: int = 0
    history_ttl: float = 300.0
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
            "history_size": self.history_size,
            "history_ttl": self.history_ttl,
            "log_format": self.log_format,
        }


# The defaults, read by the loaders (and the token verifier) instead of written again.
DEFAULTS = Settings()


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """Where a start command listens and how many worker processes it runs.

    The defaults are a container's: every interface, the port platforms expect, one worker.
    """

    host: str = "0.0.0.0"
    port: int = 8000
    workers: int = 1


SERVE_DEFAULTS = ServeOptions()


def serve_options(
    environ: Mapping[str, str],
    *,
    default_host: str = SERVE_DEFAULTS.host,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
) -> ServeOptions:
    """The options given (a command's flags) over `HOST`, `PORT`, `BIFROST_WORKERS`, over the
    defaults; SettingsError names the variable to fix."""
    if port is None:
        port = _variable(environ, "PORT", port_number, SERVE_DEFAULTS.port)
    if workers is None:
        workers = _variable(environ, "BIFROST_WORKERS", worker_count, SERVE_DEFAULTS.workers)
    return ServeOptions(host or environ.get("HOST") or default_host, port, workers)


def port_number(text: str) -> int:
    """A TCP port to listen on, from its text; ValueError says what to set."""
    number = _whole_number(text)
    if number is None or not 0 < number < 65536:
        raise ValueError(f"{_quoted(text)} is not a port number: set one from 1 to 65535")
    return number


def worker_count(text: str) -> int:
    """A number of worker processes, from its text; ValueError says what to set."""
    number = _whole_number(text)
    if number is None or number < 1:
        raise ValueError(f"{_quoted(text)} is not a number of workers: set 1 or more")
    return number


def _quoted(text: str) -> str:
    """The text as a refusal quotes it: on one short line, whatever was given."""
    return printable(repr(text), QUOTED_LENGTH)


def _whole_number(text: str) -> int | None:
    """Plain ASCII digits, few enough to be a count: not `+1`, `1_000`, `²` or 5,000 nines."""
    if text.isascii() and text.isdigit() and len(text) <= 9:
        return int(text)
    return None


def _variable(
    environ: Mapping[str, str], name: str, parse: Callable[[str], int], default: int
) -> int:
    """The variable parsed, or `default` when it is unset or empty."""
    raw = environ.get(name)
    if not raw:
        return default
    try:
        return parse(raw)
    except ValueError as error:
        raise SettingsError(f"{name}={error}") from None


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
        require_exp=reader.boolean("BIFROST_REQUIRE_EXP", DEFAULTS.require_exp),
        auth_timeout=reader.positive("BIFROST_AUTH_TIMEOUT", DEFAULTS.auth_timeout),
        ping_interval=reader.positive("BIFROST_PING_INTERVAL", DEFAULTS.ping_interval),
        idle_timeout=reader.positive("BIFROST_IDLE_TIMEOUT", DEFAULTS.idle_timeout),
        max_frame_bytes=reader.positive("BIFROST_MAX_FRAME_BYTES", DEFAULTS.max_frame_bytes),
        max_message_bytes=reader.positive("BIFROST_MAX_MESSAGE_BYTES", DEFAULTS.max_message_bytes),
        max_channels=reader.positive("BIFROST_MAX_CHANNELS", DEFAULTS.max_channels),
        max_pending_bytes=reader.positive("BIFROST_MAX_PENDING_BYTES", DEFAULTS.max_pending_bytes),
        max_frames_per_second=reader.positive(
            "BIFROST_MAX_FRAMES_PER_SECOND", DEFAULTS.max_frames_per_second
        ),
        max_connections=reader.positive("BIFROST_MAX_CONNECTIONS", DEFAULTS.max_connections),
        allowed_origins=reader.origins("BIFROST_ALLOWED_ORIGINS"),
        redis_url=reader.redis_url("BIFROST_REDIS_URL"),
        redis_prefix=environ.get("BIFROST_REDIS_PREFIX", DEFAULTS.redis_prefix),
        history_size=reader.count("BIFROST_HISTORY_SIZE", DEFAULTS.history_size),
        history_ttl=reader.positive("BIFROST_HISTORY_TTL", DEFAULTS.history_ttl),
        log_format=reader.choice("BIFROST_LOG_FORMAT", DEFAULTS.log_format, LOG_FORMATS),
    )
    if settings.idle_timeout <= settings.ping_interval:
        raise SettingsError(
            "BIFROST_IDLE_TIMEOUT must be longer than BIFROST_PING_INTERVAL "
            f"(got {settings.idle_timeout:g} and {settings.ping_interval:g} seconds), "
            "so that a silent client has time to answer a ping"
        )
    if not settings.history_ttl < MAX_HISTORY_TTL:
        raise SettingsError(
            f"BIFROST_HISTORY_TTL={settings.history_ttl:g} is too long: set a number of "
            f"seconds under {MAX_HISTORY_TTL:g} (30 days), e.g. {DEFAULTS.history_ttl:g}"
        )
    if settings.history_size > MAX_HISTORY_SIZE:
        raise SettingsError(
            f"BIFROST_HISTORY_SIZE={settings.history_size} is more than one socket could "
            f"recover: set at most {MAX_HISTORY_SIZE}, e.g. 100"
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
        """The pinned algorithms: by default the settings' own, and with a public key its
        algorithm, after theirs when a secret is set too."""
        defaults = DEFAULTS.jwt_algorithms
        if public_key is not None:
            own = (default_algorithm_for(public_key),)
            defaults = defaults + own if self.environ.get("JWT_SECRET") else own
        raw = self.environ.get(name) or ",".join(defaults)
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

    def positive(self, name: str, default: Number) -> Number:
        """A number above zero, of the default's type: whole when the default is an int."""
        raw = self.environ.get(name)
        if raw is None or raw == "":
            return default
        kind = type(default)
        try:
            value = kind(raw.strip())
        except ValueError:
            value = None
        if value is None or not value > 0:
            unit = "whole number" if kind is int else "number"
            raise SettingsError(f"{name}={raw!r} is not a positive {unit}: set e.g. {default}")
        return value

    def count(self, name: str, default: int) -> int:
        """A whole number of 0 or more."""
        raw = self.environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw.strip())
        except ValueError:
            value = -1
        if value < 0:
            raise SettingsError(
                f"{name}={raw!r} is not a whole number of 0 or more: set e.g. 100 (0 turns it off)"
            )
        return value

    def choice(self, name: str, default: str, options: tuple[str, ...]) -> str:
        """One of `options`."""
        raw = self.environ.get(name) or default
        if raw.strip().lower() not in options:
            raise SettingsError(f"{name}={raw!r} is not known: set one of {', '.join(options)}")
        return raw.strip().lower()

    def origins(self, name: str) -> frozenset[str]:
        raw = self.environ.get(name, "")
        return frozenset(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
