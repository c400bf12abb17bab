"""Analytic profiles: a roofline from datasheet peaks and the model's shapes.

Every latency is ``overhead + max(bytes / (bandwidth * eff_bw), flops / (peak * eff_fl))`` for
the base model and KV cache, plus a separate term for the LoRA kernels, because vLLM runs
LoRA as its own shrink/expand kernels over weights stacked and **padded to the tier**
``R``: a decode step streams ``min(batch, lora_slots) * R * params_per_rank`` LoRA weights
whatever the adapters' own ranks are. The efficiency factors are assumptions typical of
vLLM on these GPUs, stated in every generated file; measured profiles (``loraserve profile``)
replace these files where a GPU was available.

Run ``python -m loraserve.profiles.analytic`` to regenerate the shipped files.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from loraserve.models.base_model import ALL_LINEAR_MODULES, PRESETS, BaseModelSpec
from loraserve.profiles.schema import Profile, TierProfile

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GPUSpec:
    """Datasheet figures of a GPU type.

    Attributes
    ----------
    name : str
        Profile key.
    peak_tflops : float
        Dense BF16 tensor-core peak.
    hbm_gbps : float
        HBM bandwidth in GB/s.
    host_link_gbps : float
        Host-to-device bandwidth (one direction) in GB/s.
    memory_gib : float
        Memory.
    """

    name: str
    peak_tflops: float
    hbm_gbps: float
    host_link_gbps: float
    memory_gib: float


#: SXM parts; PCIe Gen5 x16 (H100) and Gen4 x16 (A100) for the host link.
GPU_SPECS: dict[str, GPUSpec] = {
    "H100-80GB": GPUSpec("H100-80GB", peak_tflops=989.4, hbm_gbps=3350.0,
                         host_link_gbps=64.0, memory_gib=80.0),
    "A100-80GB": GPUSpec("A100-80GB", peak_tflops=312.0, hbm_gbps=2039.0,
                         host_link_gbps=32.0, memory_gib=80.0),
}


@dataclass(frozen=True)
class Efficiency:
    """Fractions of peak that real kernels reach, and fixed per-step costs."""

    compute: float = 0.6
    bandwidth: float = 0.8
    lora_bandwidth: float = 0.5
    host_link: float = 0.8
    rdma: float = 0.8
    step_overhead_ms: float = 1.5
    lora_kernel_us: float = 2.0
    load_overhead_ms: float = 2.0


BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
PREFILL_TOKENS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
TIERS = (8, 16, 32, 64, 128, 256, 320, 512)
#: The RDMA link the shipped ``peer_load_ms`` holds for: one 200 Gb/s NIC (HDR InfiniBand or
#: 200G RoCE); the cost model rescales the transfer to each path's bandwidth.
PEER_LINK_GBIT_PER_S = 200.0
LORA_SLOTS = 16
CONTEXT_TOKENS = 1024


def _lora_ms(
    model: BaseModelSpec, gpu: GPUSpec, eff: Efficiency, tier: int, tokens: int, distinct: int
) -> float:
    per_rank = model.lora_params_per_rank(ALL_LINEAR_MODULES)
    weight_bytes = distinct * tier * per_rank * model.dtype_bytes
    flops = 2.0 * tokens * tier * per_rank
    memory_s = weight_bytes / (gpu.hbm_gbps * 1e9 * eff.lora_bandwidth)
    compute_s = flops / (gpu.peak_tflops * 1e12 * eff.compute)
    # Two kernels (shrink, expand) per module per layer, with CUDA graphs.
    kernels = 2 * len(ALL_LINEAR_MODULES) * model.num_layers
    return 1e3 * max(memory_s, compute_s) + kernels * eff.lora_kernel_us * 1e-3


def decode_step_ms(
    model: BaseModelSpec, gpu: GPUSpec, tier: int, batch: int,
    context: int = CONTEXT_TOKENS, lora_slots: int = LORA_SLOTS, eff: Efficiency = Efficiency(),
) -> float:
    """Roofline decode-step latency for ``batch`` sequences at rank tier ``tier``."""
    weight_bytes = model.weight_bytes
    kv_bytes = batch * context * model.kv_bytes_per_token
    flops = 2.0 * model.total_params * batch
    flops += 4.0 * batch * context * model.num_layers * model.hidden_size
    memory_s = (weight_bytes + kv_bytes) / (gpu.hbm_gbps * 1e9 * eff.bandwidth)
    compute_s = flops / (gpu.peak_tflops * 1e12 * eff.compute)
    base_ms = 1e3 * max(memory_s, compute_s)
    return eff.step_overhead_ms + base_ms + _lora_ms(
        model, gpu, eff, tier, batch, min(batch, lora_slots)
    )


def prefill_ms(
    model: BaseModelSpec, gpu: GPUSpec, tier: int, tokens: int,
    lora_slots: int = LORA_SLOTS, eff: Efficiency = Efficiency(),
) -> float:
    """Roofline prefill latency for a pass over ``tokens`` tokens at rank tier ``tier``."""
    flops = 2.0 * model.total_params * tokens
    # Causal attention: QK^T and PV over half the square, per layer.
    flops += 2.0 * tokens * tokens * model.num_layers * model.hidden_size
    memory_s = model.weight_bytes / (gpu.hbm_gbps * 1e9 * eff.bandwidth)
    compute_s = flops / (gpu.peak_tflops * 1e12 * eff.compute)
    # A prefill chunk mixes a few requests; assume one adapter per 512 tokens.
    distinct = min(lora_slots, max(1, tokens // 512))
    return eff.step_overhead_ms + 1e3 * max(memory_s, compute_s) + _lora_ms(
        model, gpu, eff, tier, tokens, distinct
    )


def adapter_load_ms(
    model: BaseModelSpec, gpu: GPUSpec, rank: int, eff: Efficiency = Efficiency()
) -> float:
    """Host-to-GPU copy time of a rank-``rank`` adapter on every linear module."""
    size = model.adapter_bytes(rank, ALL_LINEAR_MODULES)
    return eff.load_overhead_ms + 1e3 * size / (gpu.host_link_gbps * 1e9 * eff.host_link)


def peer_load_ms(
    model: BaseModelSpec, gpu: GPUSpec, rank: int, link_gbit_per_s: float = PEER_LINK_GBIT_PER_S,
    eff: Efficiency = Efficiency(),
) -> float:
    """Load time of a rank-``rank`` adapter from a peer node over an RDMA link.

    Stock vLLM loads an adapter from a path into host memory and then copies it to the GPU,
    so a remote pair costs the network transfer of the weights (at ``eff.rdma`` of the
    link) plus the host-to-GPU load of :func:`adapter_load_ms`.
    """
    size = model.adapter_bytes(rank, ALL_LINEAR_MODULES)
    network_ms = 1e3 * size / (link_gbit_per_s * 1e9 / 8 * eff.rdma)
    return network_ms + adapter_load_ms(model, gpu, rank, eff)


def analytic_profile(model: BaseModelSpec, gpu: GPUSpec, eff: Efficiency = Efficiency()) -> Profile:
    """Build the analytic profile of ``model`` on ``gpu``."""
    tiers = {
        tier: TierProfile(
            decode_ms=tuple(round(decode_step_ms(model, gpu, tier, b, eff=eff), 4)
                            for b in BATCH_SIZES),
            prefill_ms=tuple(round(prefill_ms(model, gpu, tier, n, eff=eff), 4)
                             for n in PREFILL_TOKENS),
        )
        for tier in TIERS
    }
    description = (
        "Analytic roofline, not measured. Per step: "
        f"{eff.step_overhead_ms} ms overhead + max(bytes / (HBM {gpu.hbm_gbps:g} GB/s x "
        f"{eff.bandwidth}), FLOPs / ({gpu.peak_tflops:g} TFLOPS bf16 dense x {eff.compute})) for "
        "base weights, KV cache and attention; plus LoRA shrink/expand kernels streaming "
        f"min(batch, {LORA_SLOTS}) adapters padded to the tier at {eff.lora_bandwidth} of HBM "
        f"bandwidth and {eff.lora_kernel_us} us per kernel launch; decode at {CONTEXT_TOKENS} "
        "tokens of context; adapter load = "
        f"{eff.load_overhead_ms} ms + bytes / (host link {gpu.host_link_gbps:g} GB/s x "
        f"{eff.host_link}); peer load = bytes / ({PEER_LINK_GBIT_PER_S:g} Gb/s RDMA x {eff.rdma}) "
        f"+ adapter load. Datasheet figures: NVIDIA {gpu.name} SXM."
    )
    return Profile(
        gpu_type=gpu.name,
        base_model=model.name,
        source="analytic",
        description=description,
        provenance={"generator": "loraserve.profiles.analytic",
                    "command": "python -m loraserve.profiles.analytic"},
        lora_slots=LORA_SLOTS,
        context_tokens=CONTEXT_TOKENS,
        lora_target_modules=ALL_LINEAR_MODULES,
        batch_sizes=BATCH_SIZES,
        prefill_tokens=PREFILL_TOKENS,
        tiers=tiers,
        adapter_load_ms={r: round(adapter_load_ms(model, gpu, r, eff), 4) for r in TIERS},
        peer_load_ms={r: round(peer_load_ms(model, gpu, r, eff=eff), 4) for r in TIERS},
        peer_link_gbit_per_s=PEER_LINK_GBIT_PER_S,
    )


SHIPPED_DIR = Path(__file__).parent / "data"


def shipped_path(gpu_type: str, model_name: str, source: str = "analytic") -> Path:
    """Where the shipped profile of ``model_name`` on ``gpu_type`` lives."""
    suffix = "" if source == "analytic" else f".{source}"
    return SHIPPED_DIR / gpu_type / f"{model_name}{suffix}.yaml"


def main(argv: list[str] | None = None) -> int:
    """Regenerate the shipped analytic profiles."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=SHIPPED_DIR)
    args = parser.parse_args(argv)
    for gpu in GPU_SPECS.values():
        for model in PRESETS.values():
            path = args.out / gpu.name / f"{model.name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(analytic_profile(model, gpu).to_yaml(), encoding="utf-8")
            logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
