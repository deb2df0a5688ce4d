"""The application class, which every way of starting the service serves with.

Sanic takes a protocol class only as `protocol=` to `prepare`/`run`, which its command line
never passes; `BifrostSanic.prepare` makes `bifrost.front.FrontProtocol` the default, so that
every way of starting the service (`sanic bifrost.app`, `python -m bifrost`, `bifrost serve`,
`app.run`) serves with it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sanic import Sanic
from sanic.config import Config

from bifrost.front import FrontProtocol
from bifrost.service import BifrostContext
from bifrost.signals import hold_stop_signals

__all__ = ["BifrostSanic"]


class BifrostSanic(Sanic[Config, BifrostContext]):
    """Serves with `FrontProtocol` unless told another, and holds the stop signals until its
    worker manager's state is safe from them."""

    def prepare(
        self, *args: Any, protocol: type[asyncio.Protocol] | None = None, **kwargs: Any
    ) -> None:
        super().prepare(*args, protocol=protocol or FrontProtocol, **kwargs)
        if not kwargs.get("single_process"):
            # Released by `release_stop_signals`, the main process's first listener.
            hold_stop_signals()
