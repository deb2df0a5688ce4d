"""The rules of the service, with no I/O: what a frame, an upgrade request, a token, a setting
or a channel name means, the timing of liveness, the registry's bookkeeping and fan-out.

Nothing here imports Sanic, asyncio or Redis, so every rule is unit-tested without a server;
the server's modules (`bifrost.*`, `bifrost.blueprints`, `bifrost.brokers`) carry decisions out.
"""
