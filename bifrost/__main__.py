"""`python -m bifrost`: the production start command, configured by the environment alone.

Containers and platforms give their settings as environment variables (`HOST`, `PORT`,
`BIFROST_WORKERS`, besides the service's own) and stop a service with SIGTERM. This runs
Sanic's runner in this very process, no shell in between, so the signal reaches it and the
service shuts down gracefully. One worker runs in a single process: if it dies, the process
exits and the platform restarts it, instead of a manager living on with no worker.
"""

from __future__ import annotations

from sanic import Sanic
from sanic.worker.loader import AppLoader

from bifrost.rules.settings import SettingsError, read_environment, serve_options

__all__ = ["APP", "main"]

# The application both start commands serve, as Sanic's loader names it.
APP = "bifrost.app:app"


def main() -> None:
    """Serve `bifrost.app` until SIGTERM or SIGINT."""
    try:
        options = serve_options(read_environment())
    except SettingsError as error:
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
