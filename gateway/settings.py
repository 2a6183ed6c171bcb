"""Gateway configuration, read from `TRITONCHAT_GATEWAY_*` environment variables.

List values are JSON in the environment, e.g.
`TRITONCHAT_GATEWAY_TRITON_URLS='["127.0.0.1:8001"]'`.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """Everything the gateway process needs; built once and passed to `create_app`."""

    model_config = SettingsConfigDict(env_prefix="TRITONCHAT_GATEWAY_", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=9000, ge=0, le=65535)
    triton_urls: list[str] = Field(default_factory=lambda: ["127.0.0.1:8001"])
    """Triton gRPC endpoints: `host:port`, or `dns:///host:port` for every address the name
    resolves to (a Kubernetes headless Service); requests go to the least-loaded ready one."""
    triton_metrics_ports: list[int] = Field(default_factory=list)
    """Triton metrics ports, scraped for queue lengths: none, one for all endpoints, or one
    per `triton_urls` entry (same host as its gRPC address)."""
    health_check_interval_s: float = Field(default=1.0, gt=0)
    """Time between two health rounds over the Triton endpoints."""
    health_check_timeout_s: float = Field(default=2.0, gt=0)
    """A Triton endpoint that does not answer a probe within this is unreachable."""
    api_keys: list[str] = Field(default_factory=list)
    """When non-empty, every route but /health needs `Authorization: Bearer <key>`."""
    request_timeout_s: float = Field(default=600.0, gt=0)
    """Upper bound on one generation, passed to gRPC as the stream deadline."""
    model_list_ttl_s: float = Field(default=5.0, ge=0)
    """How long the model list from Triton is reused before asking again."""
    max_request_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    """Larger request bodies are refused with 413 before they are parsed."""
    graceful_shutdown_s: float = Field(default=30.0, gt=0)
    """On SIGTERM: stop accepting, let open requests and streams finish for up to this long."""
    log_level: str = "info"

    @field_validator("triton_urls")
    @classmethod
    def _at_least_one_url(cls, urls: list[str]) -> list[str]:
        cleaned = [u.strip() for u in urls if u.strip()]
        if not cleaned:
            raise ValueError("at least one Triton gRPC URL is required")
        return cleaned

    @model_validator(mode="after")
    def _metrics_ports_match_urls(self) -> GatewaySettings:
        if len(self.triton_metrics_ports) not in (0, 1, len(self.triton_urls)):
            raise ValueError("give no triton_metrics_ports, one, or one per triton_urls entry")
        return self
