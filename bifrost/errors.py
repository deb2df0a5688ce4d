"""Every HTTP error of the service as a JSON body `{"error": "<reason>"}`.

Clients of `/broadcast` parse the body on failure; Sanic's own errors (404, 405, 413 for a
body over the limit) must read the same way, and an unexpected fault must not leak a trace.
"""

from __future__ import annotations

import logging

from sanic import Request
from sanic.exceptions import SanicException
from sanic.handlers import ErrorHandler
from sanic.response import HTTPResponse, json

from bifrost.rules.text import printable

__all__ = ["JSONErrorHandler"]

logger = logging.getLogger("bifrost.errors")


class JSONErrorHandler(ErrorHandler):
    """Answers every error with a status and a one-line JSON reason."""

    def default(self, request: Request, exception: Exception) -> HTTPResponse:
        if isinstance(exception, SanicException):
            status = exception.status_code
            # Sanic's reasons quote the request (an unknown method or Expect), as it decoded
            # bytes that are not UTF-8: into surrogates, which no JSON answer can carry.
            reason = printable(str(exception)) or "Error"
        else:
            self.log(request, exception)
            status, reason = 500, "Internal error"
        return json({"error": reason}, status=status, headers=getattr(exception, "headers", None))
