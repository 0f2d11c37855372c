"""Thresholds and settings of SPEC §2, §4–§6, one frozen pydantic-settings model.

Every value can come from, in increasing priority: the defaults below, a `--config FILE`
(JSON or TOML with these names as keys), and `LEARNSTREAM_<NAME>` environment variables.
Durations are written as `7d`, `5m`, `30s`, `1h` or a number of seconds.
"""

from __future__ import annotations

import json
import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: Any) -> timedelta:
    """`7d`, `5m`, `30s`, `1h`, `250ms`, a number of seconds, or a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return timedelta(seconds=float(value))
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (write e.g. 7d, 5m, 30s, 1h)")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


class ConfigError(ValueError):
    """A setting or argument is wrong; the message names the value and the fix."""


class Settings(BaseSettings):
    """All thresholds of SPEC §2, §4–§6 with SPEC's defaults."""

    model_config = SettingsConfigDict(
        env_prefix="LEARNSTREAM_", frozen=True, extra="forbid", validate_default=True
    )

    # §3 privacy
    pseudonym_key: SecretStr | None = Field(default=None, description="HMAC secret for user_key")
    # §2 input
    max_event_bytes: int = Field(default=65536, gt=0)
    max_clock_skew: timedelta = timedelta(minutes=5)
    dedup_horizon: timedelta = timedelta(days=7)
    default_timezone: str = "UTC"
    # §4 time
    max_out_of_orderness: timedelta = timedelta(minutes=5)
    allowed_lateness: timedelta = timedelta(hours=1)
    idle_timeout: timedelta = timedelta(seconds=30)
    # §5 analytics
    trend_window: timedelta = timedelta(days=30)
    # §6 alerts
    streak_alert_min: int = Field(default=3, ge=1)
    # state bounds (issue 5)
    state_ttl: timedelta = timedelta(days=180)
    # engine
    batch_size: int = Field(default=200_000, gt=0, description="records per micro-batch")
    shards: int = Field(default=2, gt=0, description="shard keys users are hashed onto")
    snapshot_interval: timedelta = timedelta(seconds=10)
    #: tables are committed (in the background) at least this often, and at every snapshot
    commit_interval: timedelta = timedelta(seconds=2)

    @field_validator(
        "max_clock_skew",
        "dedup_horizon",
        "max_out_of_orderness",
        "allowed_lateness",
        "idle_timeout",
        "trend_window",
        "state_ttl",
        "snapshot_interval",
        "commit_interval",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return parse_duration(value)

    @field_validator("default_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(value)
        except Exception as exc:  # noqa: BLE001 - ZoneInfo raises several kinds
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    def key_bytes(self) -> bytes:
        """UTF-8 of the pseudonymisation secret; raises ConfigError when it is not set."""
        if self.pseudonym_key is None or not self.pseudonym_key.get_secret_value():
            raise ConfigError(
                "LEARNSTREAM_PSEUDONYM_KEY is not set: export a secret, "
                "e.g. LEARNSTREAM_PSEUDONYM_KEY=$(openssl rand -hex 32)"
            )
        return self.pseudonym_key.get_secret_value().encode("utf-8")


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from defaults, an optional JSON/TOML file, the environment and overrides.

    Raises ConfigError with a one-line message naming the bad value.
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read --config {str(path)!r}: {exc.strerror}") from exc
        try:
            values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"--config {str(path)!r} is not valid JSON/TOML: {exc}") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"--config {str(path)!r} must hold an object of settings")
        known = set(Settings.model_fields)
        for name in values:
            if name not in known:
                raise ConfigError(
                    f"unknown setting {name!r} in {str(path)!r}; known: {', '.join(sorted(known))}"
                )
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except Exception as exc:  # pydantic ValidationError -> one line
        errors = getattr(exc, "errors", None)
        if callable(errors):
            first = errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()))
            raise ConfigError(
                f"bad setting {loc}={first.get('input')!r}: {first.get('msg')}"
            ) from exc
        raise ConfigError(str(exc)) from exc


__all__ = ["ConfigError", "Settings", "load_settings", "parse_duration"]
