"""Settings of `bifrost/rules/settings.py`: defaults, parsing and the one-line refusals."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from bifrost.rules.settings import (
    DEFAULTS,
    LOCAL_HOST,
    ServeOptions,
    Settings,
    SettingsError,
    load_settings,
    secret_length_warning,
    serve_options,
    with_checked_secret,
)

SECRET = "s" * 64
README = Path(__file__).resolve().parent.parent / "README.md"


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


def test_start_options_read_host_port_and_workers():
    """HOST, PORT and BIFROST_WORKERS are read, a container's defaults otherwise."""
    options = serve_options({"HOST": "127.0.0.1", "PORT": "9000", "BIFROST_WORKERS": "3"})
    assert options == ServeOptions("127.0.0.1", 9000, 3)
    assert serve_options({}) == serve_options({"HOST": "", "PORT": ""}) == ServeOptions()
    assert ServeOptions() == ServeOptions("0.0.0.0", 8000, 1)


def test_start_options_given_win_over_the_environment():
    """A command's flags win over the variables, which win over its default host."""
    env = {"HOST": "10.0.0.1", "PORT": "not a port", "BIFROST_WORKERS": "0"}
    given = serve_options(env, host="::1", port=9001, workers=2)
    assert given == ServeOptions("::1", 9001, 2)
    assert serve_options({}, default_host=LOCAL_HOST).host == LOCAL_HOST
    assert serve_options({"HOST": "10.0.0.1"}, default_host=LOCAL_HOST).host == "10.0.0.1"


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("PORT", "http"),
        ("PORT", "0"),
        ("PORT", "70000"),
        ("PORT", "+80"),
        ("PORT", " 80"),
        ("PORT", "8_000"),
        ("PORT", "\u0668\u0660"),
        ("PORT", "\u00b2"),
        ("PORT", "9" * 5000),
        ("BIFROST_WORKERS", "0"),
        ("BIFROST_WORKERS", "two"),
        ("BIFROST_WORKERS", "-1"),
    ],
)
def test_start_options_refuse_what_is_no_number(variable, raw):
    """A PORT or BIFROST_WORKERS that is not plain digits in range is refused, naming it."""
    with pytest.raises(SettingsError, match=f"^{variable}=") as refused:
        serve_options({variable: raw})
    assert len(str(refused.value)) < 200


def test_readme_settings_table_shows_the_defaults():
    """The README's Settings table gives each setting the default the code has."""
    rows = re.findall(r"^\| `([A-Z_]+)` \| `([^`]+)` \|", README.read_text(), re.MULTILINE)
    shown = {variable.removeprefix("BIFROST_").lower(): default for variable, default in rows}
    defaults = Settings()
    checked = 0
    for setting in fields(Settings):
        if setting.name in shown:
            assert shown[setting.name] == _as_shown(getattr(defaults, setting.name)), setting.name
            checked += 1
    assert checked >= 12, shown
    start = re.search(
        r"^\| `HOST`, `PORT`, `BIFROST_WORKERS` \| ([^|]+) \|", README.read_text(), re.M
    )
    assert start, "the README's Settings table has no row for HOST, PORT, BIFROST_WORKERS"
    options = ServeOptions()
    assert start[1].strip() == f"`{options.host}`, `{options.port}`, `{options.workers}`"


def _as_shown(value: object) -> str:
    """A default as the README writes it: `true`, `10`, `2.5`, `bifrost:`."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def test_history_is_off_unless_sized():
    """No history by default; a size turns it on, for the TTL given or 300 s."""
    assert (DEFAULTS.history_size, DEFAULTS.history_ttl) == (0, 300)
    settings = load_settings({"BIFROST_HISTORY_SIZE": "100", "BIFROST_HISTORY_TTL": "90.5"})
    assert (settings.history_size, settings.history_ttl) == (100, 90.5)
    assert load_settings({"BIFROST_HISTORY_SIZE": "0"}).history_size == 0


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("BIFROST_HISTORY_SIZE", "-1"),
        ("BIFROST_HISTORY_SIZE", "ten"),
        ("BIFROST_HISTORY_SIZE", "1.5"),
        ("BIFROST_HISTORY_SIZE", "100000000"),
        ("BIFROST_HISTORY_TTL", "0"),
        ("BIFROST_HISTORY_TTL", "-5"),
        ("BIFROST_HISTORY_TTL", "nan"),
        ("BIFROST_HISTORY_TTL", "inf"),
        ("BIFROST_HISTORY_TTL", "soon"),
    ],
)
def test_bad_history_settings_stop_start_up(variable, raw):
    """A wrong history setting is one line naming the variable and what to set."""
    with pytest.raises(SettingsError, match=f"^{variable}=") as refused:
        load_settings({variable: raw})
    assert "set" in str(refused.value)
