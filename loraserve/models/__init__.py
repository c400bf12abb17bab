"""Validated inputs and outputs: base models, workload, cluster, SLO, plans and results."""

from loraserve.models.base_model import ALL_LINEAR_MODULES, PRESETS, BaseModelSpec, TargetModule
from loraserve.models.config import (
    ADMISSIBLE_RANKS,
    SLO,
    Adapter,
    AdapterDefaults,
    Config,
    ConfigError,
    GPUPool,
    ServingLimits,
    config_from_mapping,
    load_config,
)
from loraserve.models.migration import (
    MigrationPlan,
    MigrationStep,
    migration_cost,
    plan_migration,
    relabel,
)
from loraserve.models.plan import (
    GPUPlacement,
    PlacementPlan,
    SolveResult,
    Violation,
    link_traffic,
)
from loraserve.models.topology import FABRIC, LinkSpec, Topology, TopologySpec

__all__ = [
    "ADMISSIBLE_RANKS",
    "ALL_LINEAR_MODULES",
    "FABRIC",
    "PRESETS",
    "SLO",
    "Adapter",
    "AdapterDefaults",
    "BaseModelSpec",
    "Config",
    "ConfigError",
    "GPUPlacement",
    "GPUPool",
    "LinkSpec",
    "MigrationPlan",
    "MigrationStep",
    "PlacementPlan",
    "ServingLimits",
    "SolveResult",
    "TargetModule",
    "Topology",
    "TopologySpec",
    "Violation",
    "config_from_mapping",
    "link_traffic",
    "load_config",
    "migration_cost",
    "plan_migration",
    "relabel",
]
