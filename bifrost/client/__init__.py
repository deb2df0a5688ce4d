"""What an application uses to talk to Bifröst: the Python SDK (`sdk`) and the `bifrost`
command (`cli`). Neither imports the server, only the pure rules they share with it
(`bifrost.rules`): an application installs Bifröst for these alone.

`from bifrost.client import BifrostClient` is the SDK's public path.
"""

from bifrost.client.sdk import (
    BROADCAST_TTL,
    DEFAULT_ALGORITHM,
    BifrostClient,
    BifrostError,
    BroadcastAnswer,
    Position,
    broadcast_claims,
    token_for,
)

__all__ = [
    "BROADCAST_TTL",
    "DEFAULT_ALGORITHM",
    "BifrostClient",
    "BifrostError",
    "BroadcastAnswer",
    "Position",
    "broadcast_claims",
    "token_for",
]
