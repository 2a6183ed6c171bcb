"""Settings from flags and environment."""

from __future__ import annotations

import pytest

from gateway.__main__ import parse_args, settings_from_args
from gateway.settings import GatewaySettings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("HOST", "PORT", "TRITON_URLS", "API_KEYS"):
        monkeypatch.delenv(f"TRITONCHAT_GATEWAY_{key}", raising=False)

    settings = settings_from_args(parse_args([]))

    assert (settings.host, settings.port) == ("127.0.0.1", 9000)
    assert settings.triton_urls == ["127.0.0.1:8001"]
    assert settings.api_keys == []
    assert settings.model_list_ttl_s > 0 and settings.request_timeout_s > 0


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITONCHAT_GATEWAY_PORT", "7000")
    monkeypatch.setenv("TRITONCHAT_GATEWAY_API_KEYS", '["env-key"]')

    settings = settings_from_args(
        parse_args(
            ["--port", "9100", "--triton-url", "127.0.0.1:1", "--triton-url", "127.0.0.1:2",
             "--log-level", "debug"]
        )
    )

    assert settings.port == 9100
    assert settings.triton_urls == ["127.0.0.1:1", "127.0.0.1:2"]
    assert settings.api_keys == ["env-key"]
    assert settings.log_level == "debug"

    keys = settings_from_args(parse_args(["--api-key", "a", "--api-key", "b"])).api_keys
    assert keys == ["a", "b"]


def test_empty_triton_url_list_is_rejected() -> None:
    with pytest.raises(ValueError):
        GatewaySettings(triton_urls=[" "])
