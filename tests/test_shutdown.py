"""Graceful shutdown: every socket hears 1012 so that clients reconnect to a live instance."""

from __future__ import annotations

import asyncio
import signal

import pytest
from websockets.exceptions import ConnectionClosed

from tests.clients import authenticated


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("args", [("--single-process",), ()], ids=["single-process", "worker"])
async def test_shutdown_closes_every_socket_with_1012(start_server, sig, args):
    """On SIGTERM or SIGINT every socket is closed with 1012 and the process exits promptly."""
    live = start_server(args=args)
    sockets = [await authenticated(live, ["leaving", f"own:{n}"]) for n in range(3)]
    live.process.send_signal(sig)
    for ws in sockets:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert (ws.close_code, ws.close_reason) == (1012, "Service restart")
    exit_code = await asyncio.to_thread(live.process.wait, 15)
    assert exit_code == 0
