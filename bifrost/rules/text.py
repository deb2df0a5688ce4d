"""Text from clients and tokens, checked before it reaches an encoder, a Redis key or a log.

JSON may escape lone UTF-16 surrogates (`"\\ud800"`), which JavaScript makes whenever it cuts
a string in the middle of an emoji; the standard library's json, which pyjwt decodes tokens
with, accepts them, and Sanic decodes request bytes that are not UTF-8 into them. No UTF-8
encoder can write them (orjson, Redis keys, a JSON log line), so text that must be carried is
checked with `is_utf8_text` and refused at the door. Text that is only shown (a reason in a
log line or an answer) is made `printable` instead: a newline in it would forge a log line,
an escape sequence would repaint a terminal, and its length is the sender's to choose.
"""

from __future__ import annotations

__all__ = ["MAX_REASON_LENGTH", "NOT_UTF8", "is_utf8_text", "printable"]

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
