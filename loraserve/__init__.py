"""loraserve: rank-aware placement and routing of LoRA adapters on a vLLM GPU fleet.

Plan capacity from Python::

    import loraserve
    config = loraserve.load_config("examples/quickstart.yaml")
    result = loraserve.plan(config, solver="auto", time_limit=30)
    print(result.status, result.objective, result.lower_bound)
    print(result.plan.tier_table())
"""

from loraserve.models import (
    SLO,
    Adapter,
    BaseModelSpec,
    Config,
    ConfigError,
    GPUPool,
    PlacementPlan,
    ServingLimits,
    SolveResult,
    Violation,
    config_from_mapping,
    load_config,
)
from loraserve.profiles import CostModel, Profile
from loraserve.solver import solve as plan

__version__ = "0.1.0"

__all__ = [
    "SLO",
    "Adapter",
    "BaseModelSpec",
    "Config",
    "ConfigError",
    "CostModel",
    "GPUPool",
    "PlacementPlan",
    "Profile",
    "ServingLimits",
    "SolveResult",
    "Violation",
    "__version__",
    "config_from_mapping",
    "load_config",
    "plan",
]
