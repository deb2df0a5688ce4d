"""What a token may say: verification of subscribe and broadcast JWTs, with no I/O.

The two kinds of token must not stand in for each other: a subscribe token leaked from a
browser must never be able to broadcast, so each kind is recognised by its claims.
"""

from __future__ import annotations

import json as stdlib_json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt
import orjson
from jwt.algorithms import HMACAlgorithm

from bifrost.rules.channels import NOT_A_NAME, channel_name_problem
from bifrost.rules.keys import HMAC_ALGORITHMS, PublicKey
from bifrost.rules.settings import DEFAULTS, Settings
from bifrost.rules.text import NOT_UTF8, printable

__all__ = [
    "BAD_SIGNATURE",
    "BroadcastOrder",
    "Rejection",
    "TokenRejected",
    "TokenVerifier",
]

BAD_SIGNATURE = "Bad signature"
CLOCK_SKEW_SECONDS = 5


class Rejection(StrEnum):
    """Why a token was refused, in a few fixed words: the metrics' `reason` label.

    The reason text varies with what a client sends; the kind does not, so that the metric's
    series stay few.
    """

    SIGNATURE = "signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    ALGORITHM = "algorithm"
    MALFORMED = "malformed"
    CLAIMS = "claims"


class TokenRejected(Exception):
    """A token that must not be honoured: its `kind`, and its text, the reason given to the sender.

    Reasons quote the token at times (pyjwt names an unknown `crit` entry), so the text is
    made printable and short: it goes to the log and into answers as it is.
    """

    def __init__(self, kind: Rejection, reason: str) -> None:
        super().__init__(printable(reason))
        self.kind = kind


@dataclass(frozen=True, slots=True)
class BroadcastOrder:
    """A verified broadcast: which channels, the message object, and its JSON for the sockets."""

    channels: tuple[str, ...]
    message: dict[str, Any]
    payload: bytes


class TokenVerifier:
    """Verifies tokens against the pinned algorithms and the key family each one names.

    HMAC tokens verify with the secret or, while it is rotated out, the previous one; every
    other algorithm verifies with the public key only.
    """

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        public_key: PublicKey | None = None,
        algorithms: Sequence[str] = DEFAULTS.jwt_algorithms,
        require_exp: bool = DEFAULTS.require_exp,
        max_channels: int = DEFAULTS.max_channels,
    ) -> None:
        self._secrets = [secret.encode() for secret in secrets if secret]
        self._public_keys = [public_key] if public_key is not None else []
        self._algorithms = frozenset(algorithms)
        self._require_exp = require_exp
        self._max_channels = max_channels
        self._jwt = _FastPayloadPyJWT()
        # Each family of algorithms with the keys that verify it, HMAC first. A token is parsed
        # once in the common case: pyjwt checks its `alg` against the family before verifying.
        self._families = [
            (keys, sorted(family & self._algorithms))
            for keys, family in (
                (self._secrets, HMAC_ALGORITHMS),
                (self._public_keys, self._algorithms - HMAC_ALGORITHMS),
            )
            if keys and family & self._algorithms
        ]
        # pyjwt checks an HMAC secret afresh for every token (that it is no PEM, SSH or JSON
        # key), which is 40 % of verifying one; the secrets are checked here once instead.
        # `_jws`: the instance's own algorithm registry, which pyjwt exposes no other way (its
        # public register_algorithm changes the module's shared one); test_dependency_pins.py.
        for algorithm in HMAC_ALGORITHMS.intersection(self._algorithms):
            hmac = _PreparedHMAC(_HASHES[algorithm], self._secrets)
            self._jwt._jws.unregister_algorithm(algorithm)
            self._jwt._jws.register_algorithm(algorithm, hmac)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        """The verifier the settings describe."""
        return cls(
            [settings.jwt_secret, settings.jwt_secret_previous],
            public_key=settings.jwt_public_key,
            algorithms=settings.jwt_algorithms,
            require_exp=settings.require_exp,
            max_channels=settings.max_channels,
        )

    def subscribe_channels(self, token: object) -> list[str]:
        """The channels a subscribe token grants, in order and each once."""
        claims = self._claims(token, require_exp=False)
        if "message" in claims:
            raise TokenRejected(Rejection.CLAIMS, "a broadcast token cannot subscribe")
        return self._channel_list(claims.get("channels"), "channels")

    def broadcast_order(self, token: object) -> BroadcastOrder:
        """The channels and message a broadcast token orders sent."""
        claims = self._claims(token, require_exp=self._require_exp)
        message = claims.get("message")
        if message is None:
            raise TokenRejected(
                Rejection.CLAIMS, "token has no message claim (a subscribe token cannot broadcast)"
            )
        if not isinstance(message, dict) or not isinstance(message.get("event"), str):
            raise TokenRejected(Rejection.CLAIMS, "message must be an object with a string event")
        has_channel, has_channels = "channel" in claims, "channels" in claims
        if has_channel == has_channels:
            raise TokenRejected(Rejection.CLAIMS, "token must name either channel or channels")
        if has_channel:
            channel = claims["channel"]
            if (problem := channel_name_problem(channel)) is not None:
                raise TokenRejected(Rejection.CLAIMS, f"channel {problem}")
            channels = [channel]
        else:
            channels = self._channel_list(claims["channels"], "channels")
        return BroadcastOrder(tuple(channels), message, _message_json(message))

    def _claims(self, token: object, *, require_exp: bool) -> dict[str, Any]:
        if not isinstance(token, str) or not token:
            raise TokenRejected(Rejection.MALFORMED, "token must be a non-empty string")
        if not token.isascii():
            raise TokenRejected(Rejection.MALFORMED, "invalid token: a JWT is ASCII text")
        signed_in_family = False
        for keys, algorithms in self._families:
            for key in keys:
                try:
                    return self._decode(token, key, algorithms, require_exp)
                except jwt.InvalidSignatureError:
                    signed_in_family = True
                except jwt.InvalidAlgorithmError:
                    break  # not signed with an algorithm of this family: try the next one
        if signed_in_family:
            raise TokenRejected(Rejection.SIGNATURE, BAD_SIGNATURE)
        raise TokenRejected(Rejection.ALGORITHM, "token algorithm is not allowed")

    def _decode(
        self, token: str, key: bytes | PublicKey, algorithms: list[str], require_exp: bool
    ) -> dict[str, Any]:
        """Verify with one key. A wrong signature, or an algorithm of another family, is left
        for the caller to try the next key or family."""
        try:
            return self._jwt.decode(
                token,
                key,
                algorithms=algorithms,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp"] if require_exp else []},
            )
        except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError):
            raise
        except jwt.ExpiredSignatureError:
            raise TokenRejected(Rejection.EXPIRED, "token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected(Rejection.NOT_YET_VALID, "token is not valid yet") from None
        except jwt.MissingRequiredClaimError as error:
            raise TokenRejected(Rejection.CLAIMS, f"token has no {error.claim} claim") from None
        except jwt.PyJWTError as error:
            raise TokenRejected(Rejection.MALFORMED, f"invalid token: {error}") from None

    def _channel_list(self, channels: object, claim: str) -> list[str]:
        if not isinstance(channels, list) or not channels:
            raise TokenRejected(
                Rejection.CLAIMS, f"{claim} must be a non-empty list of channel names"
            )
        if len(channels) > self._max_channels:
            raise TokenRejected(
                Rejection.CLAIMS, f"{claim} lists more than {self._max_channels} channels"
            )
        problems = {channel_name_problem(c) for c in channels}
        if NOT_A_NAME in problems:
            raise TokenRejected(Rejection.CLAIMS, f"each of {claim} {NOT_A_NAME}")
        if NOT_UTF8 in problems:
            raise TokenRejected(Rejection.CLAIMS, f"a channel of {claim} {NOT_UTF8}")
        return list(dict.fromkeys(channels))


_HASHES = {
    "HS256": HMACAlgorithm.SHA256,
    "HS384": HMACAlgorithm.SHA384,
    "HS512": HMACAlgorithm.SHA512,
}


class _FastPayloadPyJWT(jwt.PyJWT):
    """pyjwt reading the payload with orjson, through the hook it offers for decoding it
    otherwise; anything orjson refuses (a number past 64 bits, a lone surrogate, another
    encoding) is left to pyjwt's own decoding, which accepts or refuses it as it always did."""

    def _decode_payload(self, decoded: dict[str, Any]) -> dict[str, Any]:
        try:
            payload = orjson.loads(decoded["payload"])
        except orjson.JSONDecodeError:
            return super()._decode_payload(decoded)
        if not isinstance(payload, dict):
            return super()._decode_payload(decoded)  # refused there, in pyjwt's words
        return payload


class _PreparedHMAC(HMACAlgorithm):
    """HMAC whose configured secrets were checked once, at start-up, not on every token."""

    def __init__(self, hash_alg: Any, secrets: Sequence[bytes]) -> None:
        super().__init__(hash_alg)
        self._prepared = {secret: HMACAlgorithm.prepare_key(self, secret) for secret in secrets}

    def prepare_key(self, key: str | bytes) -> bytes:
        prepared = self._prepared.get(key) if isinstance(key, bytes) else None
        return prepared if prepared is not None else super().prepare_key(key)


def _message_json(message: dict[str, Any]) -> bytes:
    """The message's JSON, keys and values as sent; refused when UTF-8 cannot carry it.

    orjson covers every message but those with integers beyond 64 bits or nested deeper than
    255, which JSON allows and the standard library still writes. Neither writes a lone
    surrogate, in a key or a value at any depth: it is found here, at no cost to the others.
    """
    try:
        return orjson.dumps(message)
    except orjson.JSONEncodeError:
        pass
    try:
        return stdlib_json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise TokenRejected(Rejection.CLAIMS, f"message {NOT_UTF8}") from None
