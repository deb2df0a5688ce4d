"""Text from clients and tokens, checked before it reaches an encoder, a Redis key or a log.

JSON may escape lone UTF-16 surrogates (`"\\ud800"`), which JavaScript makes whenever it cuts
a string in the middle of an emoji; the standard library's json, which pyjwt decodes tokens
with, accepts them, and Sanic decodes request bytes that are not UTF-8 into them. No UTF-8
encoder can write them (orjson, Redis keys, a JSON log line), so text that must be carried is
checked with `is_utf8_text` and refused at the door. Text that is only shown (a reason in a
log line or an answer) is made `printable` instead: a newline in it would forge a log line,
an escape sequence would repaint a terminal, and its length is the sender's to choose.

An event stream's token comes in its URL (`?token=`, EventSource can send no header), and
Sanic quotes URLs in its access lines and some of its own: `without_query_tokens` takes the
token's value out of such a line before it is written.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

__all__ = [
    "MAX_REASON_LENGTH",
    "NOT_UTF8",
    "REDACTED",
    "is_utf8_text",
    "printable",
    "without_query_tokens",
]

MAX_REASON_LENGTH = 200
# Why text that `is_utf8_text` refuses is refused, said after what holds it ("channel ...").
NOT_UTF8 = (
    "holds a lone UTF-16 surrogate (as left by cutting a string inside an emoji), "
    "which UTF-8 cannot carry"
)
ELLIPSIS = "…"


def is_utf8_text(text: str) -> bool:
    """Whether UTF-8 can carry the text: it holds no lone surrogate."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str, limit: int = MAX_REASON_LENGTH) -> str:
    """The text on one line of at most `limit` characters, safe for any log and any encoder.

    Whatever Python does not print as itself (control and format characters, line and
    paragraph separators, lone surrogates) is written as its escape, as `repr` writes it.
    """
    shown = text[: limit + 1]  # one more than fits: enough to know whether it was cut
    if not shown.isprintable():
        shown = "".join(
            c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in shown
        )
    return shown if len(shown) <= limit else shown[: limit - 1] + ELLIPSIS


REDACTED = "[redacted]"
# A URL's query as a log line quotes it: up to a space, a quote or a fragment.
_QUERY = re.compile(r"\?([^\s'\"#]*)")


def without_query_tokens(text: str) -> str:
    """The text with the value of every `token` parameter of the queries it quotes replaced
    by `[redacted]`: the parameter named as Sanic reads it, percent-escapes decoded, so that
    no spelling of the name lets a token through."""
    if "?" not in text:
        return text
    return _QUERY.sub(_redacted_query, text)


def _redacted_query(match: re.Match[str]) -> str:
    pairs = match.group(1).split("&")
    for index, pair in enumerate(pairs):
        name, equals, _ = pair.partition("=")
        if equals and unquote_plus(name) == "token":
            pairs[index] = f"{name}={REDACTED}"
    return "?" + "&".join(pairs)
