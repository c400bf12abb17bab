"""Pure helpers shared by the profilers (torch-free): model specs, monotone fits, GPU keys."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from loraserve.models import PRESETS, BaseModelSpec, ConfigError
from loraserve.models.config import format_validation_error
from loraserve.models.io import read_yaml


def isotonic(values: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in least squares.

    Pool adjacent violators: a run that decreases is replaced by its mean.
    """
    blocks: list[list[float]] = []  # [mean, weight]
    for value in values:
        blocks.append([float(value), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, weight = blocks.pop()
            blocks[-1] = [(blocks[-1][0] * blocks[-1][1] + mean * weight)
                          / (blocks[-1][1] + weight), blocks[-1][1] + weight]
    fitted: list[float] = []
    for mean, weight in blocks:
        fitted.extend([mean] * int(weight))
    return fitted


def isotonic_table(table: Mapping[int, Sequence[float]], iterations: int = 500
                   ) -> dict[int, list[float]]:
    """The least-squares fit to ``table`` that is non-decreasing along rows and along tiers.

    Dykstra's alternating projections onto the two monotone cones (each a pool-adjacent-
    violators fit), then a running maximum that removes what rounding leaves (a maximum of
    non-decreasing rows is one). Unlike a running maximum alone, a lower tier that is
    measured slower than the next one is met half-way rather than lifting every tier above.
    """
    tiers = sorted(table)
    x = np.array([list(table[t]) for t in tiers], dtype=float)
    rows_fix = np.zeros_like(x)
    cols_fix = np.zeros_like(x)
    for _ in range(iterations):
        z = np.array([isotonic(row) for row in x + rows_fix])
        rows_fix = x + rows_fix - z
        previous = x
        x = np.array([isotonic(col) for col in (z + cols_fix).T]).T
        cols_fix = z + cols_fix - x
        if np.allclose(x, previous, rtol=1e-10, atol=1e-12):
            break
    x = np.maximum.accumulate(np.maximum.accumulate(x, axis=1), axis=0)
    return {tier: [float(v) for v in row] for tier, row in zip(tiers, x, strict=True)}


def gpu_type_from_name(name: str, total_bytes: int) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``H100-80GB``; memory from the name, else the total.

    The shipped profiles are keyed this way; ``--gpu-type`` overrides it.
    """
    upper = name.upper()
    family = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", upper)
    memory = re.search(r"(\d+)\s*GB", upper)
    gigabytes = int(memory.group(1)) if memory else round(total_bytes / 2**30)
    label = family.group(1) if family else re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
    return f"{label}-{gigabytes}GB"


def load_model_spec(name_or_path: str) -> BaseModelSpec:
    """A preset by name, or a YAML file with the shapes (the config's ``base_model`` mapping).

    Raises
    ------
    ConfigError
        Unknown preset, missing file, or invalid shapes.
    """
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"--model: '{name_or_path}' is neither a preset "
                          f"({', '.join(sorted(PRESETS))}) nor a YAML file of shapes")
    raw = read_yaml(path, "a YAML file of model shapes")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a model spec must be a mapping of shapes (name, num_layers, "
                          "hidden_size, ...)")
    try:
        return BaseModelSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, raw, str(path))) from None
