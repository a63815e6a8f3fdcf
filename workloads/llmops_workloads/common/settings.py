"""Configuration: a YAML file (what the operator's ConfigMap mounts) overlaid by environment
variables. The file uses the operator's camelCase keys; environment variables use
``LLMOPS_<SECTION>__<SNAKE_KEY>`` (e.g. ``LLMOPS_BATCHING__MAX_BATCH_SIZE=64``) and win."""

from __future__ import annotations

import contextvars
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
S = TypeVar("S", bound="FileSettings")
_file_data: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("file_data", default={})  # noqa: B039


def snake_keys(value: Any) -> Any:
    """maxBatchSize -> max_batch_size, recursively (map keys only)."""
    if isinstance(value, dict):
        return {_CAMEL.sub("_", k).lower() if isinstance(k, str) else k: snake_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snake_keys(v) for v in value]
    return value


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self.data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self.data.items() if k in self.settings_cls.model_fields}


class Section(BaseModel):
    """A config section: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FileSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMOPS_", env_nested_delimiter="__", extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        data = _file_data.get()
        # Precedence: explicit arguments, then the environment, then the file.
        return init_settings, env_settings, _YamlSource(settings_cls, data)

    @classmethod
    def load(cls: type[S], path: str | Path | None = None, **overrides: Any) -> S:
        data: dict[str, Any] = {}
        if path:
            raw = yaml.safe_load(Path(path).read_text()) or {}
            if not isinstance(raw, dict):
                raise ValueError(f"{path}: expected a mapping at the top level")
            data = snake_keys(raw)
        token = _file_data.set(data)
        try:
            return cls(**overrides)
        finally:
            _file_data.reset(token)
