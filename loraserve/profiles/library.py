"""Finding the profile for a (GPU type, base model): user files, measured, then analytic."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Literal

from loraserve.models import PRESETS, BaseModelSpec, ConfigError
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


def shipped_profiles(source: Literal["analytic", "measured"] | None = None) -> list[Path]:
    """Profile files shipped with the package: all, or only the analytic or measured ones.

    A measured profile is ``<GPU>/<model>.measured.yaml``, beside its raw measurements
    (``<model>.measured.csv``) and the analytic ``<GPU>/<model>.yaml``.
    """
    paths = sorted(SHIPPED_DIR.glob("*/*.yaml"))
    if source is None:
        return paths
    measured = [p for p in paths if p.name.endswith(".measured.yaml")]
    return measured if source == "measured" else [p for p in paths if p not in measured]


def find_profile(
    gpu_type: str, base_model: BaseModelSpec, extra: Iterable[Path] = (),
    shipped_dir: Path = SHIPPED_DIR,
) -> Profile:
    """Return the profile for ``gpu_type`` and ``base_model``.

    The first match wins: a user file from ``extra``; a shipped measured profile; a shipped
    analytic profile; an analytic profile built now from the GPU's datasheet figures (for a
    base model given by its shapes). The solver, ``PlacementPlan.verify`` and the simulator
    all come through here (via :class:`~loraserve.profiles.CostModel`), so a measured
    profile replaces the analytic one for all of them at once.

    Parameters
    ----------
    gpu_type : str
    base_model : BaseModelSpec
    extra : iterable of Path
        User profile files (the config's ``profiles``), searched first.
    shipped_dir : Path
        Where the shipped profiles live (``<dir>/<GPU>/<model>[.measured].yaml``).

    Raises
    ------
    ConfigError
        When no profile exists and the GPU type has no datasheet entry.
    """
    for path in extra:
        profile = load_profile(path)
        if profile.gpu_type == gpu_type and profile.base_model == base_model.name:
            return profile
    preset = PRESETS.get(base_model.name)
    if preset is not None and preset != base_model:
        # A shipped profile is named after a preset and priced for its shapes; other shapes
        # under that name would be planned with the wrong costs, silently.
        logger.warning("base_model '%s' has shapes other than the preset of that name; the "
                       "shipped %s profile does not apply, so an analytic one is derived from "
                       "your shapes (rename the model, or measure it with loraserve profile)",
                       base_model.name, gpu_type)
    else:
        for suffix in (".measured.yaml", ".yaml"):
            path = shipped_dir / gpu_type / f"{base_model.name}{suffix}"
            if path.is_file():
                logger.debug("profile for %s on %s: %s", base_model.name, gpu_type, path)
                return load_profile(path)
    if gpu_type in GPU_SPECS:
        if preset is None:
            logger.warning("no profile for base model '%s' on %s: an analytic one is derived "
                           "from datasheet figures; measure one with loraserve profile for "
                           "figures you can trust", base_model.name, gpu_type)
        return analytic_profile(base_model, GPU_SPECS[gpu_type])
    known = ", ".join(sorted(GPU_SPECS))
    raise ConfigError(
        f"pools: no profile for gpu_type '{gpu_type}' with base model '{base_model.name}'; "
        f"use one of {known}, or measure one with `loraserve profile` and list it under profiles"
    )
