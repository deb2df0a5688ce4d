"""Who subscribes to what, and the shape of a bench message: shared by coordinator and generators.

Both sides derive a client's channels and URL from its global index alone, so the coordinator
can tell how many frames each channel must yield without shipping a list of 20,000 clients to
every generator process.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BENCH_EVENT", "Layout", "channel_name"]

BENCH_EVENT = "bench"
"""The event name of every broadcast the bench sends; its data is {"c", "l", "s", "t", "p"}:
channel, lane (0 unless several POSTs of the channel are in flight at once), sequence number in
that lane, send time (CLOCK_MONOTONIC ns, which all processes of one machine share) and
padding."""


def channel_name(index: int) -> str:
    return f"bench:{index}"


@dataclass(frozen=True, slots=True)
class Layout:
    """How clients spread over channels and server nodes, and how they keep their place.

    Client g subscribes to `channels_per_client` consecutive channels starting at g mod
    `channels`, and connects to node g mod len(urls): subscribers spread evenly over both.
    `positioned` clients send `since` in every authenticate and keep it from the positions of
    every frame (the protocol's opt-in to recovery: only a server with history on is measured
    with them, so every frame they get must carry positions); `reconnect` clients come back to
    the next node, with their `since`, when the server closes their socket, the first attempt
    at a random moment within `reconnect_jitter_s`. With `home_nodes` n > 0, clients start on
    the first n nodes only (1: all on node A, the rest there to take them when it stops).
    """

    urls: tuple[str, ...]
    channels: int
    channels_per_client: int = 1
    positioned: bool = False
    reconnect: bool = False
    reconnect_jitter_s: float = 0.2
    home_nodes: int = 0

    def channels_of(self, client: int) -> list[str]:
        count = min(self.channels_per_client, self.channels)
        return [channel_name((client + j) % self.channels) for j in range(count)]

    def node_of(self, client: int) -> int:
        return client % (self.home_nodes or len(self.urls))

    def url_of(self, client: int) -> str:
        return self.urls[self.node_of(client)]

    def subscribers_per_channel(self, clients: int) -> dict[str, int]:
        """How many of clients 0..clients-1 each channel has: a broadcast's expected deliveries."""
        counts = {channel_name(i): 0 for i in range(self.channels)}
        for client in range(clients):
            for name in self.channels_of(client):
                counts[name] += 1
        return counts
