"""The development tokens: signed with the secret, by the first HMAC algorithm accepted."""

from __future__ import annotations

import pytest

from bifrost.rules.devmode import NoSigningAlgorithm, signing_algorithm
from bifrost.rules.settings import Settings
from tests.live import SECRET


@pytest.mark.parametrize(
    ("algorithms", "chosen"),
    [(("HS512",), "HS512"), (("RS256", "HS256", "HS512"), "HS256"), (("EdDSA", "HS384"), "HS384")],
)
def test_the_first_hmac_algorithm_signs(algorithms: tuple[str, ...], chosen: str):
    """A public-key algorithm listed first is passed over: the server holds only a secret."""
    assert signing_algorithm(Settings(jwt_secret=SECRET, jwt_algorithms=algorithms)) == chosen


def test_no_secret_no_signing():
    """Without a secret nothing can be signed, and the reason says what to set."""
    with pytest.raises(NoSigningAlgorithm, match="JWT_SECRET"):
        signing_algorithm(Settings(jwt_secret="", jwt_algorithms=("HS512",)))
