"""Which keys verify which algorithms: shared secrets for HMAC, a public key for the rest.

A deployment that verifies with a public key holds no signing secret at all; the algorithm
of a token picks the family of key that may verify it, so that a token signed with HMAC over
the public key's text (the classic algorithm confusion) can never verify.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "KNOWN_ALGORITHMS",
    "PublicKey",
    "default_algorithm_for",
    "read_public_key",
]

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
KNOWN_ALGORITHMS = HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def read_public_key(value: str) -> PublicKey:
    """The public key given as PEM text or as the path of a PEM file.

    Raises ValueError saying what is wrong, for the start-up message.
    """
    text = value if value.lstrip().startswith("-----BEGIN") else _read_file(value)
    try:
        key = load_pem_public_key(text.encode())
    except ValueError as error:
        raise ValueError(f"is not a PEM public key ({error})") from None
    if not isinstance(key, PublicKey):
        raise ValueError(f"is a {type(key).__name__}, not an RSA, EC or Ed25519/Ed448 key")
    return key


def default_algorithm_for(key: PublicKey) -> str:
    """The algorithm tokens are most likely signed with for this kind of key."""
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _EC_ALGORITHMS.get(key.curve.name, "ES256")
    return "EdDSA"


def _read_file(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as error:
        raise ValueError(f"is neither PEM text nor a readable file ({error.strerror})") from None
