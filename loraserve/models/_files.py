"""Reading and writing the YAML files models are saved as: one-line errors, atomic writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from loraserve.models.config import ConfigError, format_validation_error

#: libyaml's loader when present: a migration of thousands of steps parses several times faster.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_yaml(cls: type[ModelT], text: str, source: str, what: str) -> ModelT:
    """Validate YAML ``text`` into ``cls``; :class:`ConfigError` (one line) when it is not.

    ``what`` describes the expected top level, for the message (``"a plan must be ..."``).
    """
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: YAML syntax error: {exc}".splitlines()[0]) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {what}")
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, raw, source)) from None


def read_text(path: str | Path) -> str:
    """The file's text; :class:`ConfigError` naming the path when it is missing."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a failed write leaves the old file intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
