"""Finding the profile for a (GPU type, base model): user files, measured, then analytic."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from loraserve.models import BaseModelSpec, ConfigError
from loraserve.profiles.analytic import GPU_SPECS, SHIPPED_DIR, analytic_profile
from loraserve.profiles.schema import Profile

logger = logging.getLogger(__name__)


@lru_cache(maxsize=64)
def _load_cached(path: Path, mtime: float) -> Profile:
    del mtime  # part of the cache key only: a rewritten file is read again
    return Profile.load(path)


def load_profile(path: str | Path) -> Profile:
    """Load a profile file (cached by path and modification time)."""
    path = Path(path)
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        raise ConfigError(f"{path}: profile file not found") from None
    return _load_cached(path.resolve(), mtime)


def shipped_profiles() -> list[Path]:
    """Profile files shipped with the package."""
    return sorted(SHIPPED_DIR.glob("*/*.yaml"))


def find_profile(
    gpu_type: str, base_model: BaseModelSpec, extra: Iterable[Path] = ()
) -> Profile:
    """Return the profile for ``gpu_type`` and ``base_model``.

    The first match wins: a user file from ``extra``; a shipped measured profile; a shipped
    analytic profile; an analytic profile built now from the GPU's datasheet figures (for a
    base model given by its shapes).

    Raises
    ------
    ConfigError
        When no profile exists and the GPU type has no datasheet entry.
    """
    for path in extra:
        profile = load_profile(path)
        if profile.gpu_type == gpu_type and profile.base_model == base_model.name:
            return profile
    for suffix in (".measured.yaml", ".yaml"):
        path = SHIPPED_DIR / gpu_type / f"{base_model.name}{suffix}"
        if path.is_file():
            return load_profile(path)
    if gpu_type in GPU_SPECS:
        logger.info("no shipped profile for %s on %s; deriving an analytic one",
                    base_model.name, gpu_type)
        return analytic_profile(base_model, GPU_SPECS[gpu_type])
    known = ", ".join(sorted(GPU_SPECS))
    raise ConfigError(
        f"pools: no profile for gpu_type '{gpu_type}' with base model '{base_model.name}'; "
        f"use one of {known}, or measure one with `loraserve profile` and list it under profiles"
    )
