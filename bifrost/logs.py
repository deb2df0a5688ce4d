"""The service's own log lines, beside Sanic's, on standard error: plain text or JSON lines.

Plain text reads best in a terminal; a log platform (Fly, Loki, CloudWatch, ...) wants one JSON
object per line, so `BIFROST_LOG_FORMAT=json` gives every line that form: the service's,
Sanic's (start-up, errors, access) and any other library's warnings.
"""

from __future__ import annotations

import json as stdlib_json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
from sanic.log import LOGGING_CONFIG_DEFAULTS

from bifrost.rules.text import without_query_tokens

__all__ = [
    "JSONLineFormatter",
    "QueryTokenRedaction",
    "configure_logging",
    "redact_query_tokens",
    "sanic_log_config",
]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Sanic's loggers, which quote request URLs: its access lines, and messages such as a
# request stopped or failed.
SANIC_LOGGERS = ("sanic.access", "sanic.root", "sanic.error", "sanic.server", "sanic.websockets")

# The attributes every LogRecord has; any other one was passed as `extra` and is kept.
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JSONLineFormatter(logging.Formatter):
    """One JSON object per record, on one line: time, level, logger, message, pid, extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and key not in line and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(line, default=str).decode()
        except orjson.JSONEncodeError:
            # Text UTF-8 cannot carry (a lone surrogate in another library's line, quoting
            # request bytes as Sanic decoded them): escaped by the standard library, not lost.
            return stdlib_json.dumps(line, default=str)


class QueryTokenRedaction(logging.Filter):
    """Takes the value of `?token=` out of every record that quotes a URL, before any
    handler writes it: an event stream's token travels in its URL, and no token may reach
    a log line, the access log included."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = record.__dict__.get("request")
        if isinstance(request, str):
            record.request = without_query_tokens(request)
        message = record.getMessage()
        redacted = without_query_tokens(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def redact_query_tokens() -> None:
    """Give Sanic's loggers the redaction, once per process, after Sanic configured them."""
    for name in SANIC_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, QueryTokenRedaction) for f in logger.filters):
            logger.addFilter(QueryTokenRedaction())


def configure_logging(log_format: str = "text") -> None:
    """Give the `bifrost` loggers one handler, once per process; in JSON, the root one too.

    The root handler catches other libraries' warnings (asyncio, websockets, redis), which
    would otherwise be written bare by Python's last-resort handler.
    """
    bifrost = logging.getLogger("bifrost")
    if bifrost.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JSONLineFormatter() if log_format == "json" else logging.Formatter(LOG_FORMAT)
    )
    bifrost.addHandler(handler)
    bifrost.setLevel(logging.INFO)
    bifrost.propagate = False
    if log_format == "json":
        logging.getLogger().addHandler(handler)


def sanic_log_config(log_format: str) -> dict[str, Any] | None:
    """Sanic's logging configuration for the format; None keeps Sanic's own."""
    if log_format != "json":
        return None
    formatter = {"()": f"{__name__}.JSONLineFormatter"}
    return {
        **LOGGING_CONFIG_DEFAULTS,
        # Each has its own handler: passing records on to the root's would write them twice.
        "loggers": {
            name: {**logger, "propagate": False}
            for name, logger in LOGGING_CONFIG_DEFAULTS["loggers"].items()
        },
        "formatters": {"generic": formatter, "access": formatter},
    }
