"""`python -m bifrost`: the production start command, configured by the environment alone.

Containers and platforms give their settings as environment variables (`HOST`, `PORT`,
`BIFROST_WORKERS`, besides the service's own) and stop a service with SIGTERM. This runs
Sanic's runner in this very process, no shell in between, so the signal reaches it and the
service shuts down gracefully. One worker runs in a single process: if it dies, the process
exits and the platform restarts it, instead of a manager living on with no worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sanic import Sanic
from sanic.worker.loader import AppLoader

from bifrost.rules.settings import read_environment

__all__ = ["ServeOptions", "main", "serve_options"]

APP = "bifrost.app:app"
DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 8000


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """Where to listen and how many worker processes to run."""

    host: str
    port: int
    workers: int


def serve_options(env: Mapping[str, str]) -> ServeOptions:
    """The options the environment gives; ValueError names the variable to fix."""
    host = env.get("HOST") or DEFAULT_HOST
    port = _whole_number(env, "PORT", DEFAULT_PORT)
    if not 0 < port < 65536:
        raise ValueError(f"PORT={port} is not a port number: set one from 1 to 65535")
    workers = _whole_number(env, "BIFROST_WORKERS", 1)
    if workers < 1:
        raise ValueError(f"BIFROST_WORKERS={workers} must be 1 or more")
    return ServeOptions(host, port, workers)


def _whole_number(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name) or str(default)
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number: set e.g. {default}") from None


def main() -> None:
    """Serve `bifrost.app` until SIGTERM or SIGINT."""
    try:
        options = serve_options(read_environment())
    except ValueError as error:
        raise SystemExit(f"bifrost cannot start: {error}") from None
    loader = AppLoader(APP)
    app = loader.load()
    single = options.workers == 1
    app.prepare(
        host=options.host, port=options.port, workers=options.workers, single_process=single
    )
    if single:
        Sanic.serve_single(app)
    else:
        Sanic.serve(primary=app, app_loader=loader)


if __name__ == "__main__":
    main()
