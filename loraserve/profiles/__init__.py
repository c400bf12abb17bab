"""Rank-dependent cost model: profile files, interpolation and per-tier capacity."""

from loraserve.profiles.capacity import CostModel, LatencyPrediction, TierCapacity
from loraserve.profiles.library import find_profile, load_profile, shipped_profiles
from loraserve.profiles.schema import Profile, TierProfile

__all__ = [
    "CostModel",
    "LatencyPrediction",
    "Profile",
    "TierCapacity",
    "TierProfile",
    "find_profile",
    "load_profile",
    "shipped_profiles",
]
