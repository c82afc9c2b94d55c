"""Settings, read once from ``STOCKGUARD_*`` environment variables."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stockguard.domain.delivery import parse_schedule

__all__ = ["CacheMode", "Settings"]


class CacheMode(StrEnum):
    STRICT = "strict"
    DEGRADED = "degraded"
    DISABLED = "disabled"


class Settings(BaseSettings):
    """Every setting is documented in the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="STOCKGUARD_", extra="ignore")

    database_url: SecretStr | None = Field(
        default=None, description="PostgreSQL URL; unset starts an embedded server"
    )
    redis_url: SecretStr | None = Field(
        default=None, description="Redis URL; unset starts an embedded server"
    )
    data_dir: Path = Field(default=Path(".stockguard"), description="embedded servers' data")
    redis_prefix: str = Field(default="", description="prefix for every Redis key")
    cache_mode: CacheMode = CacheMode.STRICT
    redis_timeout_seconds: float = Field(default=0.5, gt=0, le=30)
    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=20, ge=1)
    db_statement_timeout_ms: int = Field(default=10_000, ge=0)
    db_lock_timeout_ms: int = Field(default=5_000, ge=0)
    bootstrap_admin_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    razorpay_webhook_secret: SecretStr | None = None
    stripe_tolerance_seconds: int = Field(default=300, ge=1)
    expiry_interval_seconds: float = Field(default=1.0, gt=0)
    abandon_after_seconds: int = Field(default=86_400, ge=1)
    idempotency_ttl_seconds: int = Field(default=86_400, ge=86_400)
    reconcile_interval_seconds: float = Field(default=5.0, gt=0)
    reconcile_full_interval_seconds: float = Field(default=300.0, gt=0)
    recovery_interval_seconds: float = Field(default=30.0, gt=0)
    run_workers: bool = Field(default=True, description="run worker loops inside serve")
    order_batching: bool = Field(
        default=True, description="group commit of concurrent placements, cancels and payments"
    )
    order_batch_max: int = Field(default=200, ge=1, le=5000)
    order_batch_lanes: int = Field(default=4, ge=1, le=64)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    log_level: str = Field(
        default="INFO", description="serve and worker; other commands log WARNING unless set"
    )
    log_json: bool | None = Field(
        default=None, description="JSON log lines; unset: JSON unless stderr is a terminal"
    )
    housekeeping_interval_seconds: float = Field(default=3600.0, gt=0)
    # ---- outgoing events: sequencing, webhook delivery, retention
    event_retention_days: int = Field(default=7, ge=1, le=3650)
    event_sequence_interval_seconds: float = Field(default=0.1, gt=0)
    webhook_allow_private_urls: bool = False
    webhook_retry_schedule: str = "5,30,120,600,1800,3600,7200,14400,28800,43200"
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    webhook_lease_seconds: float = Field(default=30.0, gt=0, le=3600)
    webhook_poll_interval_seconds: float = Field(default=0.2, gt=0)
    webhook_concurrency: int = Field(default=32, ge=1, le=1000)

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule_parses(cls, value: str) -> str:
        parse_schedule(value)
        return value

    @model_validator(mode="after")
    def _lease_outlasts_an_attempt(self) -> Settings:
        # A lease that ran out during a slow attempt would let a second worker send again.
        if self.webhook_lease_seconds <= self.webhook_timeout_seconds + 1:
            raise ValueError(
                "webhook_lease_seconds must exceed webhook_timeout_seconds by more than 1 s"
            )
        return self

    @property
    def webhook_retry_delays(self) -> tuple[float, ...]:
        return parse_schedule(self.webhook_retry_schedule)
