"""Settings, read once from ``STOCKGUARD_*`` environment variables."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

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
        default=True, description="group commit of concurrent POST /v1/orders"
    )
    order_batch_max: int = Field(default=200, ge=1, le=5000)
    order_batch_lanes: int = Field(default=4, ge=1, le=64)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    log_level: str = "INFO"
    log_json: bool = True
