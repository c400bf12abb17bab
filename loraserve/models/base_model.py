"""Base-model shapes and the LoRA weight sizes they imply."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TargetModule = Literal["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

#: Every linear module of a Llama-style decoder layer, in vLLM's naming.
ALL_LINEAR_MODULES: tuple[TargetModule, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


class BaseModelSpec(BaseModel):
    """Shapes of a Llama-style decoder-only base model.

    Parameters
    ----------
    name : str
        Identifier used to look up profiles (for example ``llama-3-8b``).
    num_layers, hidden_size, intermediate_size : int
        Decoder depth, model width and MLP width.
    num_attention_heads, num_kv_heads : int
        Query heads and key/value heads (grouped-query attention when fewer).
    vocab_size : int
        Vocabulary size (embedding and LM head).
    dtype_bytes : int
        Bytes per weight and per KV-cache element (2 for bf16/fp16).
    param_count : int, optional
        Total parameters; derived from the shapes when omitted.
    """

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    num_layers: int = Field(ge=1, le=512)
    hidden_size: int = Field(ge=64, le=65536)
    intermediate_size: int = Field(ge=64, le=262144)
    num_attention_heads: int = Field(ge=1, le=1024)
    num_kv_heads: int = Field(ge=1, le=1024)
    vocab_size: int = Field(ge=1, le=2_000_000)
    dtype_bytes: Literal[1, 2, 4] = 2
    param_count: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _check_heads(self) -> BaseModelSpec:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                "hidden_size must be a multiple of num_attention_heads "
                f"({self.hidden_size} % {self.num_attention_heads} != 0)"
            )
        if self.num_attention_heads % self.num_kv_heads:
            raise ValueError(
                "num_attention_heads must be a multiple of num_kv_heads "
                f"({self.num_attention_heads} % {self.num_kv_heads} != 0)"
            )
        return self

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    def module_shape(self, module: TargetModule) -> tuple[int, int]:
        """Return ``(in_features, out_features)`` of one linear module in one layer."""
        h, i = self.hidden_size, self.intermediate_size
        q_out = self.num_attention_heads * self.head_dim
        kv_out = self.num_kv_heads * self.head_dim
        shapes: dict[str, tuple[int, int]] = {
            "q_proj": (h, q_out),
            "k_proj": (h, kv_out),
            "v_proj": (h, kv_out),
            "o_proj": (q_out, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }
        return shapes[module]

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer's linear modules (norms are negligible)."""
        return sum(a * b for a, b in (self.module_shape(m) for m in ALL_LINEAR_MODULES))

    @property
    def total_params(self) -> int:
        """Total parameters: given, or the linear layers plus embedding and LM head."""
        if self.param_count is not None:
            return self.param_count
        return self.num_layers * self.layer_params + 2 * self.vocab_size * self.hidden_size

    @property
    def weight_bytes(self) -> int:
        """Bytes of the base weights resident on every GPU."""
        return self.total_params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token occupies (keys and values, all layers)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    def lora_params_per_rank(self, target_modules: tuple[TargetModule, ...]) -> int:
        """LoRA parameters per unit of rank: sum over layers and modules of ``in + out``."""
        per_layer = sum(sum(self.module_shape(m)) for m in target_modules)
        return self.num_layers * per_layer

    def adapter_bytes(self, rank: int, target_modules: tuple[TargetModule, ...]) -> int:
        """Bytes of a rank-``rank`` adapter's A and B matrices on ``target_modules``."""
        return rank * self.lora_params_per_rank(target_modules) * self.dtype_bytes


def _preset(**kw: int | str) -> BaseModelSpec:
    return BaseModelSpec.model_validate(kw)


#: Published shapes (the models' ``config.json``) and parameter counts.
PRESETS: dict[str, BaseModelSpec] = {
    "llama-3-8b": _preset(
        name="llama-3-8b", num_layers=32, hidden_size=4096, intermediate_size=14336,
        num_attention_heads=32, num_kv_heads=8, vocab_size=128256, param_count=8_030_261_248,
    ),
    "llama-2-7b": _preset(
        name="llama-2-7b", num_layers=32, hidden_size=4096, intermediate_size=11008,
        num_attention_heads=32, num_kv_heads=32, vocab_size=32000, param_count=6_738_415_616,
    ),
    "qwen2.5-7b": _preset(
        name="qwen2.5-7b", num_layers=28, hidden_size=3584, intermediate_size=18944,
        num_attention_heads=28, num_kv_heads=4, vocab_size=152064, param_count=7_615_616_512,
    ),
    "mistral-7b": _preset(
        name="mistral-7b", num_layers=32, hidden_size=4096, intermediate_size=14336,
        num_attention_heads=32, num_kv_heads=8, vocab_size=32768, param_count=7_248_023_552,
    ),
}
