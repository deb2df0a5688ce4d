"""The `bifrost` command: mint a token, broadcast, listen to channels, or serve.

Everything a script may read goes to standard output; every error goes to standard error.
Exit codes: 0 done, 1 Bifröst refused or could not be reached, 2 wrong usage or settings,
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from bifrost import __version__
from bifrost.client import BROADCAST_TTL, BifrostClient, BifrostError, token_for
from bifrost.rules.channels import channel_name
from bifrost.rules.settings import (
    LOCAL_HOST,
    SERVE_DEFAULTS,
    SettingsError,
    port_number,
    read_environment,
    serve_options,
    worker_count,
)

__all__ = ["main"]

# Where `bifrost serve` listens unless told otherwise.
DEFAULT_URL = f"http://{LOCAL_HOST}:{SERVE_DEFAULTS.port}"
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# Close codes after which connecting again cannot help: the token or the frames were refused.
FINAL_CLOSE_CODES = {1003, 1008, 1009}
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0)
# How long leaving (Ctrl-C) waits for the server's answer to the close frame, as the server
# waits for a client's: the library's default of 10 s, twice over when the server never
# answers, made Ctrl-C look ignored.
CLOSE_TIMEOUT = 2.0

DESCRIPTION = """\
Bifröst: realtime broadcasts from your application's server to browsers over websockets.

Settings come from the environment (and a .env file for `serve`): JWT_SECRET signs the
tokens, BIFROST_URL says where the server is (default {url}).
"""

EPILOG = """\
examples:
  bifrost serve --dev                            a development server on port 8000
  bifrost token user:1 global                    a subscribe token for a browser
  bifrost broadcast user:1 new_item '{"id": 42}' send to user:1, print deliveries
  bifrost listen user:1 global                   print each event as it arrives

exit codes: 0 done, 1 Bifröst refused or could not be reached, 2 wrong usage or settings,
130 interrupted
"""


class UsageError(Exception):
    """A missing setting or a wrong argument: said on stderr, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; answer its exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
        return result
    except UsageError as error:
        parser.exit(EXIT_USAGE, f"bifrost {args.command}: {error}\n")
    except BifrostError as error:
        _fail(f"bifrost {args.command}: {error}")
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of the output left (`bifrost listen ... | head -3`): nothing to report.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# The subcommands' registry; argparse names its type only privately (`_SubParsersAction`).
Subcommands = Any


def _parser() -> argparse.ArgumentParser:
    """The command line: one subcommand each, declared by the functions below."""
    parser = argparse.ArgumentParser(
        prog="bifrost",
        description=DESCRIPTION.format(url=DEFAULT_URL),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bifrost {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_token(commands)
    _add_broadcast(commands)
    _add_listen(commands)
    _add_serve(commands)
    return parser


def _add_token(commands: Subcommands) -> None:
    """`bifrost token`: a subscribe token for channels."""
    token = commands.add_parser(
        "token",
        help="print a subscribe token for channels",
        description="Print a subscribe token for the channels, signed with JWT_SECRET (HS512).",
    )
    token.add_argument(
        "channels", nargs="+", type=_channel, metavar="CHANNEL", help="a channel it may hear"
    )
    token.add_argument(
        "--ttl", type=_positive, metavar="SECONDS", help="expire after SECONDS (default: never)"
    )
    _secret_option(token)
    token.set_defaults(run=_token)


def _add_broadcast(commands: Subcommands) -> None:
    """`bifrost broadcast`: an event to a channel, and its deliveries."""
    broadcast = commands.add_parser(
        "broadcast",
        help="send an event to a channel and print its deliveries",
        description=(
            "Send {event: EVENT, data: DATA} to every subscriber of CHANNEL and print how many "
            "sockets it was handed to. DATA is sent as the string given, as the README's "
            "browsers JSON.parse it; '-' reads it from standard input."
        ),
    )
    broadcast.add_argument("channel", type=_channel, metavar="CHANNEL")
    broadcast.add_argument("event", metavar="EVENT")
    broadcast.add_argument("data", nargs="?", metavar="DATA", help="the data (default: null)")
    broadcast.add_argument(
        "--ttl",
        type=_positive,
        default=BROADCAST_TTL,
        metavar="SECONDS",
        help=f"the broadcast token expires after SECONDS (default {BROADCAST_TTL:g})",
    )
    _url_option(broadcast)
    _secret_option(broadcast)
    broadcast.set_defaults(run=_broadcast)


def _add_listen(commands: Subcommands) -> None:
    """`bifrost listen`: a channel's events as JSON lines."""
    listen = commands.add_parser(
        "listen",
        help="subscribe to channels and print each event as it arrives",
        description=(
            "Subscribe to the channels and print each arriving event as one JSON line, "
            "reconnecting when the connection is lost. When the server keeps history, a "
            "reconnection resumes where the last connection stopped, and a channel whose "
            "missed events are gone is named on standard error. Status goes to standard error."
        ),
    )
    listen.add_argument("channels", nargs="+", type=_channel, metavar="CHANNEL")
    listen.add_argument(
        "--count", type=_positive_int, metavar="N", help="exit after N events (default: never)"
    )
    listen.add_argument(
        "--token", metavar="JWT", help="subscribe with this token instead of signing one"
    )
    _url_option(listen)
    _secret_option(listen)
    listen.set_defaults(run=_listen)


def _add_serve(commands: Subcommands) -> None:
    """`bifrost serve`: the service itself."""
    serve = commands.add_parser(
        "serve",
        help="run the Bifröst service",
        description=(
            "Run the Bifröst service with Sanic. Settings come from the environment and .env "
            "(see the README's Settings); --dev makes a throwaway secret when none is set."
        ),
    )
    serve.add_argument(
        "--host", help=f"address to bind (default: HOST, else {LOCAL_HOST}: this machine only)"
    )
    serve.add_argument(
        "--port",
        type=_checked(port_number),
        help=f"port to bind (default: PORT, as platforms set it, else {SERVE_DEFAULTS.port})",
    )
    serve.add_argument(
        "--workers",
        type=_checked(worker_count),
        help=(
            f"worker processes (default: BIFROST_WORKERS, else {SERVE_DEFAULTS.workers}; "
            "more need BIFROST_REDIS_URL)"
        ),
    )
    serve.add_argument(
        "--dev", action="store_true", help="development mode: debug, auto-reload, /test page"
    )
    serve.add_argument(
        "--single-process", action="store_true", help="serve in this process, without a manager"
    )
    serve.set_defaults(run=_serve)


def _url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("BIFROST_URL") or DEFAULT_URL,
        help=f"the server (default: BIFROST_URL, else {DEFAULT_URL})",
    )


def _secret_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--secret",
        default=None,
        help="the signing secret (default: JWT_SECRET; prefer the variable, argv is visible)",
    )


def _token(args: argparse.Namespace) -> int:
    print(token_for(args.channels, args.ttl, _secret(args)))
    return 0


def _broadcast(args: argparse.Namespace) -> int:
    data = sys.stdin.read() if args.data == "-" else args.data
    client = BifrostClient(args.url, _secret(args), ttl=args.ttl)
    answer = client.broadcast(args.channel, args.event, data)
    print(answer.get("deliveries"))
    return 0


def _listen(args: argparse.Namespace) -> int:
    token = args.token or token_for(args.channels, secret=_secret(args))
    return asyncio.run(_listen_until_done(_ws_url(args.url), token, args.count))


async def _listen_until_done(ws_url: str, token: str, count: int | None) -> int:
    """Print events until `count` arrived; reconnect after a lost connection, and resume.

    A server that cannot be reached at all is an error at once: reconnecting is for a
    connection that worked and was lost (a restart, a network blip). Every authenticate
    sends `since`, the positions the frames gave so far (`{}` at first), so that a server
    with history sends what was missed; one without ignores it.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

    received = 0
    failures = 0
    connected_once = False
    since: dict[str, Any] = {}
    while True:
        try:
            async with connect(ws_url, open_timeout=10, close_timeout=CLOSE_TIMEOUT) as ws:
                connected_once = True
                authenticate = {"event": "authenticate", "data": token, "since": since}
                await ws.send(json.dumps(authenticate))
                failures = 0
                async for frame in ws:
                    message = json.loads(frame)
                    _keep_positions(message, since)
                    if _is_status(message):
                        continue
                    print(json.dumps(message, ensure_ascii=False), flush=True)
                    received += 1
                    if count is not None and received >= count:
                        return 0
                close = ws.protocol.close_rcvd
        except ConnectionClosed as closed:
            close = closed.rcvd
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as error:
            close = None
            problem = f"cannot connect to {ws_url}: {error or type(error).__name__}"
            if not connected_once:
                _fail(f"bifrost listen: {problem}")
            _say(problem)
        if close is not None:
            reason = f"{close.code} {close.reason}".strip()
            if close.code in FINAL_CLOSE_CODES:
                _fail(f"bifrost listen: the server closed the connection: {reason}")
            _say(f"connection closed ({reason}), reconnecting")
        await asyncio.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)])
        failures += 1


def _keep_positions(message: Any, since: dict[str, Any]) -> None:
    """Take a frame's `positions` into `since` (the browser's `Object.assign`), and off the
    frame: an event is printed as it was broadcast."""
    positions = message.pop("positions", None) if isinstance(message, dict) else None
    if isinstance(positions, dict):
        since.update(positions)


def _is_status(message: Any) -> bool:
    """Protocol replies are said on stderr; only broadcast events go to stdout."""
    event = message.get("event") if isinstance(message, dict) else None
    if event == "subscribed":
        channel = json.loads(message["data"])["channel"]
        _say(f"subscribed to {channel}")
        if message.get("recovered") is False:
            _say(f"could not recover {channel}: events sent while disconnected may be missing")
        return True
    if event == "error":
        _say(f"the server answered an error: {message.get('data')}")
        return True
    return event == "pong"


def _serve(args: argparse.Namespace) -> int:
    """Sanic's own runner, as `sanic bifrost.app` would call it, with the options
    `python -m bifrost` reads (its flags over them), but for this machine only by default."""
    from sanic import Sanic
    from sanic.worker.loader import AppLoader

    from bifrost.__main__ import APP

    try:
        options = serve_options(
            read_environment(),
            default_host=LOCAL_HOST,
            host=args.host,
            port=args.port,
            workers=args.workers,
        )
    except SettingsError as error:
        raise UsageError(str(error)) from None
    loader = AppLoader(APP)
    app = loader.load()
    app.prepare(
        host=options.host,
        port=options.port,
        workers=options.workers,
        dev=args.dev,
        single_process=args.single_process,
    )
    if args.single_process:
        Sanic.serve_single(app)
    else:
        Sanic.serve(primary=app, app_loader=loader)
    return 0


def _ws_url(url: str) -> str:
    """The `/subscribe` websocket of a server's HTTP URL."""
    if url.startswith(("ws://", "wss://")):
        base = url
    elif url.startswith(("http://", "https://")):
        base = "ws" + url.removeprefix("http")
    else:
        raise UsageError(f"--url {url!r} is not an http(s) or ws(s) URL")
    base = base.rstrip("/")
    return base if base.endswith("/subscribe") else f"{base}/subscribe"


def _secret(args: argparse.Namespace) -> str:
    secret: str | None = args.secret or os.environ.get("JWT_SECRET")
    if not secret:
        raise UsageError("no secret to sign with: set JWT_SECRET (or pass --secret)")
    return secret


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _channel(text: str) -> str:
    """A channel name the server accepts, checked before anything is signed."""
    try:
        return channel_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None


def _checked(parse: Callable[[str], int]) -> Callable[[str], int]:
    """`parse` for argparse, which shows its ValueError's text only as ArgumentTypeError."""

    def checked(text: str) -> int:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return checked


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _fail(line: str) -> NoReturn:
    _say(line)
    raise SystemExit(EXIT_REFUSED)


if __name__ == "__main__":
    raise SystemExit(main())
