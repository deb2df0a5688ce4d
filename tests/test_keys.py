"""Public-key tokens, secret rotation and algorithm confusion."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from websockets.asyncio.client import connect

from bifrost.rules.settings import SettingsError, load_settings, with_checked_secret
from bifrost.rules.tokens import BAD_SIGNATURE, TokenRejected, TokenVerifier
from tests.clients import post_broadcast, receive_json
from tests.live import SECRET

PRIVATE_KEYS = {
    "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate,
}


def public_pem(private_key) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def verifier_for(env: dict[str, str]) -> TokenVerifier:
    settings = with_checked_secret(load_settings(env), development=False)
    return TokenVerifier.from_settings(settings)


@pytest.mark.parametrize("algorithm", list(PRIVATE_KEYS))
def test_public_key_verifies_without_any_secret(algorithm):
    """RS256, ES256 and EdDSA tokens verify with BIFROST_JWT_PUBLIC_KEY and no secret set."""
    private_key = PRIVATE_KEYS[algorithm]()
    verifier = verifier_for({"BIFROST_JWT_PUBLIC_KEY": public_pem(private_key)})
    token = jwt.encode({"channels": ["a"]}, private_key, algorithm)
    assert verifier.subscribe_channels(token) == ["a"]
    other = PRIVATE_KEYS[algorithm]()
    with pytest.raises(TokenRejected, match=BAD_SIGNATURE):
        verifier.subscribe_channels(jwt.encode({"channels": ["a"]}, other, algorithm))


def test_public_key_from_a_file(tmp_path):
    """BIFROST_JWT_PUBLIC_KEY may be the path of a PEM file."""
    private_key = PRIVATE_KEYS["ES256"]()
    path = tmp_path / "bifrost.pub"
    path.write_text(public_pem(private_key))
    verifier = verifier_for({"BIFROST_JWT_PUBLIC_KEY": str(path)})
    assert verifier.subscribe_channels(jwt.encode({"channels": ["f"]}, private_key, "ES256"))


def test_unreadable_public_key_stops_start_up():
    """A public key that is neither PEM text nor a readable file is named at start-up."""
    with pytest.raises(SettingsError, match="BIFROST_JWT_PUBLIC_KEY"):
        load_settings({"BIFROST_JWT_PUBLIC_KEY": "/nowhere/key.pem"})
    with pytest.raises(SettingsError, match="BIFROST_JWT_PUBLIC_KEY"):
        load_settings({"BIFROST_JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nnope\n"})


def test_asymmetric_algorithm_without_key_stops_start_up():
    """Pinning RS256 without a public key is refused, naming the variable to set."""
    with pytest.raises(SettingsError, match="BIFROST_JWT_PUBLIC_KEY"):
        load_settings({"JWT_SECRET": SECRET, "BIFROST_JWT_ALGORITHMS": "RS256"})


@pytest.mark.parametrize("confused", ["HS256", "HS512"])
def test_hmac_over_the_public_key_text_is_rejected(confused):
    """An HMAC token signed with the public key's PEM as its secret never verifies."""
    private_key = PRIVATE_KEYS["RS256"]()
    pem = public_pem(private_key)
    only_key = verifier_for({"BIFROST_JWT_PUBLIC_KEY": pem})
    with_secret = verifier_for(
        {
            "BIFROST_JWT_PUBLIC_KEY": pem,
            "JWT_SECRET": SECRET,
            "BIFROST_JWT_ALGORITHMS": "HS256,HS512,RS256",
        }
    )
    header = jwt.utils.base64url_encode(json.dumps({"alg": confused, "typ": "JWT"}).encode())
    body = jwt.utils.base64url_encode(json.dumps({"channels": ["a"]}).encode())
    signing_input = header + b"." + body
    algorithm = jwt.algorithms.HMACAlgorithm(
        jwt.algorithms.HMACAlgorithm.SHA256
        if confused == "HS256"
        else jwt.algorithms.HMACAlgorithm.SHA512
    )
    signature = algorithm.sign(signing_input, pem.encode())
    forged = (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()
    for verifier in (only_key, with_secret):
        with pytest.raises(TokenRejected):
            verifier.subscribe_channels(forged)


def test_secret_and_public_key_each_verify_their_own_family():
    """With both configured, HMAC tokens verify with the secret and RS256 ones with the key;
    a foreign key is a bad signature, an algorithm outside the list is refused as such."""
    private_key = PRIVATE_KEYS["RS256"]()
    verifier = verifier_for(
        {
            "BIFROST_JWT_PUBLIC_KEY": public_pem(private_key),
            "JWT_SECRET": SECRET,
            "BIFROST_JWT_ALGORITHMS": "HS512,RS256",
        }
    )
    assert verifier.subscribe_channels(jwt.encode({"channels": ["h"]}, SECRET, "HS512")) == ["h"]
    assert verifier.subscribe_channels(jwt.encode({"channels": ["r"]}, private_key, "RS256")) == [
        "r"
    ]
    foreign = jwt.encode({"channels": ["r"]}, PRIVATE_KEYS["RS256"](), "RS256")
    with pytest.raises(TokenRejected, match=f"^{BAD_SIGNATURE}$"):
        verifier.subscribe_channels(foreign)
    elliptic = jwt.encode({"channels": ["e"]}, PRIVATE_KEYS["ES256"](), "ES256")
    with pytest.raises(TokenRejected, match="algorithm is not allowed"):
        verifier.subscribe_channels(elliptic)


def test_previous_secret_is_accepted_while_rotating():
    """Tokens signed with JWT_SECRET_PREVIOUS verify too, and their claims are still checked."""
    previous = "p" * 64
    verifier = verifier_for({"JWT_SECRET": SECRET, "JWT_SECRET_PREVIOUS": previous})
    assert verifier.subscribe_channels(jwt.encode({"channels": ["old"]}, previous, "HS512"))
    assert verifier.subscribe_channels(jwt.encode({"channels": ["new"]}, SECRET, "HS512"))
    expired = jwt.encode({"channels": ["old"], "exp": time.time() - 60}, previous, "HS512")
    with pytest.raises(TokenRejected, match="expired"):
        verifier.subscribe_channels(expired)
    with pytest.raises(TokenRejected, match=BAD_SIGNATURE):
        verifier.subscribe_channels(jwt.encode({"channels": ["x"]}, "q" * 64, "HS512"))


async def test_live_server_with_only_a_public_key(start_server, tmp_path):
    """A server holding no secret subscribes and broadcasts with ES256 tokens."""
    private_key = PRIVATE_KEYS["ES256"]()
    path = tmp_path / "bifrost.pub"
    path.write_text(public_pem(private_key))
    live = start_server({"JWT_SECRET": None, "BIFROST_JWT_PUBLIC_KEY": str(path)})
    async with connect(live.ws_url) as ws:
        token = jwt.encode({"channels": ["signed"]}, private_key, "ES256")
        await ws.send(json.dumps({"event": "authenticate", "data": token}))
        assert (await receive_json(ws))["event"] == "subscribed"
        claims = {"channel": "signed", "message": {"event": "e"}, "exp": int(time.time()) + 60}
        response = await post_broadcast(live, jwt.encode(claims, private_key, "ES256"))
        assert response.json() == {"message": "Success", "deliveries": 1}
        assert await receive_json(ws) == {"event": "e"}
        hmac = jwt.encode(claims, SECRET, "HS512")
        assert (await post_broadcast(live, hmac)).status_code == 400
