"""The service's own log lines, beside Sanic's, on standard error."""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging() -> None:
    """Give the `bifrost` loggers one handler, once per process."""
    root = logging.getLogger("bifrost")
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
