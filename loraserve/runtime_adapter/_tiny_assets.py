"""Build a tiny Llama model and PEFT LoRA adapters with random weights, for a local vLLM fleet.

Run with the Python of an environment that has torch, transformers, tokenizers and
safetensors (the vLLM one): ``python _tiny_assets.py OUT_DIR --ranks 8 16 64 128``. Nothing is
downloaded: the tokenizer is trained here on a few sentences, the model and the adapters are
initialised from a fixed seed. This file is a standalone script: it does not import
``loraserve`` (whose environment need not have torch) and ``loraserve`` does not import it.

Layout written::

    OUT_DIR/model/                       config.json, model.safetensors, tokenizer files
    OUT_DIR/adapters/r<rank>-<k>/        adapter_config.json, adapter_model.safetensors
    OUT_DIR/assets.json                  what was built (model path, adapter id -> path, rank)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

#: Shapes of the model: two layers keep a CPU vLLM start near 30 s; head_dim 64 is one the
#: CPU attention kernels support.
HIDDEN = 256
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 512
VOCAB = 512
MAX_POSITIONS = 1024

#: Modules every adapter modifies (vLLM's Llama names).
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a small language model serves many low rank adapters",
    "placement of adapters by rank keeps the latency low",
    "requests are routed to the workers that host their adapter",
    "hello world, this is a tiny test model for loraserve",
    "zero one two three four five six seven eight nine ten",
] * 20


def _build_tokenizer(out: Path) -> None:
    # Imported here: only the vLLM environment has these (mypy runs without them).
    from tokenizers import (  # type: ignore[import-not-found,unused-ignore]
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast  # type: ignore[import-not-found,unused-ignore]

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        model_max_length=MAX_POSITIONS,
    )
    # A chat template, so that /v1/chat/completions works on the tiny model too.
    wrapped.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    )
    wrapped.save_pretrained(out)


def _build_model(out: Path, seed: int) -> int:
    import torch
    from transformers import (  # type: ignore[import-not-found,unused-ignore]
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POSITIONS, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False, torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    return int(sum(p.numel() for p in model.parameters()))


def _module_shape(name: str) -> tuple[int, int]:
    head_dim = HIDDEN // HEADS
    outputs = {"q_proj": HIDDEN, "k_proj": KV_HEADS * head_dim, "v_proj": KV_HEADS * head_dim,
               "o_proj": HIDDEN}
    return HIDDEN, outputs[name]


def _build_adapter(out: Path, rank: int, seed: int, base_path: str) -> None:
    import torch
    from safetensors.torch import save_file  # type: ignore[import-not-found,unused-ignore]

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, Any] = {}
    for layer in range(LAYERS):
        for module in TARGET_MODULES:
            fan_in, fan_out = _module_shape(module)
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            # B is not zero (PEFT initialises it to zero), so each adapter changes the output.
            tensors[f"{prefix}.lora_A.weight"] = (
                torch.randn(rank, fan_in, generator=generator) / fan_in**0.5)
            tensors[f"{prefix}.lora_B.weight"] = (
                torch.randn(fan_out, rank, generator=generator) / rank**0.5)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_path,
        "r": rank, "lora_alpha": rank, "lora_dropout": 0.0, "bias": "none",
        "target_modules": list(TARGET_MODULES), "fan_in_fan_out": False,
        "modules_to_save": None, "use_rslora": False, "use_dora": False,
        "inference_mode": True,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    """Parse the arguments and build the assets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 64, 128])
    parser.add_argument("--per-rank", type=int, default=2, help="adapters of each rank")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    out: Path = args.out.resolve()
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    _build_tokenizer(model_dir)
    params = _build_model(model_dir, args.seed)
    adapters: dict[str, dict[str, Any]] = {}
    for rank in args.ranks:
        for k in range(args.per_rank):
            name = f"r{rank}-{k}"
            path = out / "adapters" / name
            _build_adapter(path, rank, args.seed * 1000 + rank * 10 + k, str(model_dir))
            adapters[name] = {"path": str(path), "rank": rank}
    manifest = {"model": str(model_dir), "parameters": params, "adapters": adapters,
                "target_modules": list(TARGET_MODULES)}
    (out / "assets.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
