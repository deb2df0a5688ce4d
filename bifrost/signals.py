"""Every termination signal a platform or a terminal sends ends in the graceful shutdown.

Sanic stops gracefully on SIGINT and SIGTERM only; SIGHUP (a terminal closing, some
supervisors) and SIGQUIT (Ctrl-\\) kept their default action and killed a process outright,
and a killed main process left its workers orphaned and serving. These listeners give HUP and
QUIT the very handlers Sanic gives INT and TERM: in the main process the worker manager's
shutdown, in a worker (or the single process) the server's stop.

A signal sent to the whole process group (a terminal closing, Ctrl-C, systemd stopping a unit)
reaches a worker twice, from the sender and again from the main process stopping it; once a
worker is stopping, a further signal is ignored, so that its sockets still hear 1012 and the
broadcasts in flight are answered (the closing handshakes and Sanic's graceful timeout bound
the shutdown, and a second signal to the main process kills every process at once).

Sanic's main process keeps its workers' state in a `multiprocessing.Manager`, a child process
of the same group, which it starts before any listener runs; a signal to the group killed that
child while the main process still needed it for the shutdown ("Broken pipe", exit 1). The stop
signals are therefore blocked from `BifrostSanic.prepare` until `main_process_start`, the
moment after the Manager is started: the Manager inherits the blocked mask and leaves the
shutdown to the main process (which ends it), while a signal the main process got meanwhile is
delivered as soon as they are released.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from functools import partial
from multiprocessing import resource_tracker
from typing import Any

from sanic import Sanic

__all__ = [
    "STOP_SIGNALS",
    "hold_stop_signals",
    "ignore_signals_while_stopping",
    "release_stop_signals",
    "stop_server_on_signals",
    "stop_workers_on_signals",
]

logger = logging.getLogger("bifrost")

# Handled by Sanic itself.
SANIC_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Given the same handlers here.
EXTRA_STOP_SIGNALS = (signal.SIGHUP, signal.SIGQUIT)
STOP_SIGNALS = SANIC_STOP_SIGNALS + EXTRA_STOP_SIGNALS


def hold_stop_signals() -> None:
    """Before Sanic starts its Manager: the stop signals wait, in this process and its children."""
    # Starting multiprocessing's resource tracker unblocks INT and TERM in the process that
    # starts it; the Manager would start it after this. Started first, it leaves the mask be.
    resource_tracker.ensure_running()
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


async def release_stop_signals(app: Sanic[Any, Any]) -> None:
    """Once the Manager runs: this process hears the stop signals again, those held included."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


async def stop_workers_on_signals(app: Sanic[Any, Any]) -> None:
    """In the main process, once the worker manager exists: HUP and QUIT stop it as TERM does."""
    for stop_signal in EXTRA_STOP_SIGNALS:
        # The manager's own handler of INT and TERM, undocumented; tests/test_dependency_pins.py.
        signal.signal(stop_signal, app.manager.shutdown_signal)


async def stop_server_on_signals(app: Sanic[Any, Any]) -> None:
    """In a worker or the single process: HUP and QUIT stop the server as TERM does."""
    loop = asyncio.get_running_loop()
    for stop_signal in EXTRA_STOP_SIGNALS:
        loop.add_signal_handler(stop_signal, partial(app.stop, terminate=False))


def ignore_signals_while_stopping() -> None:
    """Called first when a server stops: no signal may cut its shutdown short."""
    loop = asyncio.get_running_loop()
    for stop_signal in STOP_SIGNALS:
        loop.add_signal_handler(stop_signal, _already_stopping, stop_signal)


def _already_stopping(stop_signal: signal.Signals) -> None:
    logger.info("stopping already: %s ignored", stop_signal.name)
