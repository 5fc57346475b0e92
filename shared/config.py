"""Typed settings: an optional YAML file (`IDP_CONFIG`) overlaid with `IDP_*` environment variables.

Each service declares a `Settings` struct extending `BaseSettings`. `load_settings` parses it once at
start-up; a wrong value raises `ConfigError` with one line naming the variable, and the service stops.
Nothing reads `os.environ` after that.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import yaml

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class ConfigError(Exception):
    """A setting is missing or invalid; the message is one line meant for an operator."""


class BaseSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Settings every service has."""

    database_url: str
    """PostgreSQL URL (`IDP_DATABASE_URL`); each service uses its own schema inside it."""
    nats_url: str
    """NATS server URL(s), comma-separated (`IDP_NATS_URL`)."""
    http_host: str = "127.0.0.1"
    """Address the HTTP server binds (`IDP_HTTP_HOST`)."""
    http_port: Port = 8080
    """HTTP port (`IDP_HTTP_PORT`); 0 picks a free one."""
    environment: Literal["development", "production"] = "development"
    """`production` forbids the dev token (`IDP_ENVIRONMENT`)."""
    dev_token: str | None = None
    """Dev-only admin bearer token (`IDP_DEV_TOKEN`). Never set by default; `idp up` sets one."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level of the JSON logs (`IDP_LOG_LEVEL`)."""
    stream_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    """Replicas of the JetStream streams this service creates (`IDP_STREAM_REPLICAS`)."""
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 4 * 1024 * 1024
    """Largest accepted request body (`IDP_MAX_BODY_BYTES`)."""
    db_pool_size: Annotated[int, msgspec.Meta(ge=1, le=200)] = 10
    """Connections in this process's PostgreSQL pool (`IDP_DB_POOL_SIZE`)."""
    owners_may_edit: bool = True
    """Owners of a catalog entity may edit it without a role binding granting the edit (`IDP_OWNERS_MAY_EDIT`)."""

    def __post_init__(self) -> None:
        if self.dev_token is not None:
            if self.environment == "production":
                raise ValueError("IDP_DEV_TOKEN must not be set when IDP_ENVIRONMENT=production")
            if len(self.dev_token) < 16:
                raise ValueError("IDP_DEV_TOKEN must be at least 16 characters")


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load_settings(settings_type: type[SettingsT], environ: Mapping[str, str] | None = None) -> SettingsT:
    """Build `settings_type` from `IDP_CONFIG` (a YAML file) and `IDP_<FIELD>` variables, env winning."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    config_path = environ.get("IDP_CONFIG")
    if config_path:
        try:
            with open(config_path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"IDP_CONFIG={config_path}: {exc}".splitlines()[0]) from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"IDP_CONFIG={config_path}: expected a mapping at the top level")
        raw.update(loaded)
    for field in msgspec.structs.fields(settings_type):
        value = environ.get(f"IDP_{field.name.upper()}")
        if value is not None and value != "":
            raw[field.name] = value
    try:
        return msgspec.convert(raw, settings_type, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_one_line(exc)) from exc


def _one_line(exc: msgspec.ValidationError) -> str:
    message = str(exc)
    if " - at `$." in message:
        message, _, path = message.partition(" - at `$.")
        name = path.rstrip("`").split(".")[0].split("[")[0]
        return f"IDP_{name.upper()}: {message}"
    if message.startswith("Object missing required field `"):
        name = message.split("`")[1]
        return f"IDP_{name.upper()} is required"
    return message
