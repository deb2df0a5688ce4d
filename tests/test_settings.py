"""Settings of `bifrost/rules/settings.py`: defaults, parsing and the one-line refusals."""

from __future__ import annotations

import pytest

from bifrost.rules.settings import (
    Settings,
    SettingsError,
    load_settings,
    secret_length_warning,
    with_checked_secret,
)

SECRET = "s" * 64


def test_defaults_match_the_contract():
    """With only a secret, every setting has the default the contract names."""
    settings = load_settings({"JWT_SECRET": SECRET})
    assert settings == Settings(jwt_secret=SECRET)
    assert settings.jwt_algorithms == ("HS512",)
    assert (settings.auth_timeout, settings.ping_interval, settings.idle_timeout) == (10, 30, 60)
    assert settings.max_frame_bytes == settings.max_message_bytes == 65536
    assert settings.max_pending_bytes == 1024 * 1024
    assert (settings.max_channels, settings.max_connections) == (100, 10000)
    assert settings.redis_url is None


def test_values_are_parsed():
    """Numbers, booleans, algorithm and origin lists are read from their text."""
    settings = load_settings(
        {
            "JWT_SECRET": SECRET,
            "BIFROST_JWT_ALGORITHMS": "HS256, HS512",
            "BIFROST_REQUIRE_EXP": "false",
            "BIFROST_PING_INTERVAL": "2.5",
            "BIFROST_IDLE_TIMEOUT": "5",
            "BIFROST_ALLOWED_ORIGINS": "https://a.example/, https://b.example",
        }
    )
    assert settings.jwt_algorithms == ("HS256", "HS512")
    assert settings.require_exp is False
    assert (settings.ping_interval, settings.idle_timeout) == (2.5, 5.0)
    assert settings.allowed_origins == {"https://a.example", "https://b.example"}


def test_idle_timeout_must_exceed_ping_interval():
    """A client must have time to answer a ping before it counts as idle."""
    with pytest.raises(SettingsError, match="BIFROST_IDLE_TIMEOUT"):
        load_settings({"BIFROST_PING_INTERVAL": "30", "BIFROST_IDLE_TIMEOUT": "30"})


def test_secret_rules_depend_on_mode():
    """Outside development a missing or short secret is refused; in development one is made."""
    with pytest.raises(SettingsError, match="JWT_SECRET is not set"):
        with_checked_secret(load_settings({}), development=False)
    with pytest.raises(SettingsError, match="JWT_SECRET is 31 characters"):
        with_checked_secret(load_settings({"JWT_SECRET": "x" * 31}), development=False)
    made = with_checked_secret(load_settings({}), development=True)
    assert made.secret_is_throwaway and len(made.jwt_secret) >= 64


def test_public_summary_has_no_secret():
    """The logged summary of settings never contains the secret."""
    assert SECRET not in str(load_settings({"JWT_SECRET": SECRET}).public_summary())


@pytest.mark.parametrize(
    ("secret", "algorithms", "warned"),
    [
        ("k" * 40, ("HS512",), True),
        ("k" * 40, ("HS256", "ES256"), True),
        ("k" * 64, ("HS512",), False),
        ("k" * 40, ("ES256",), False),
        ("", ("RS256", "EdDSA"), False),
    ],
)
def test_secret_length_warning_only_when_hmac_is_accepted(secret, algorithms, warned):
    """A short secret is warned about only when some HMAC algorithm verifies with it."""
    warning = secret_length_warning(Settings(jwt_secret=secret, jwt_algorithms=algorithms))
    if warned:
        assert warning == "JWT_SECRET has 40 characters; 64 or more are recommended for HS512"
    else:
        assert warning is None
