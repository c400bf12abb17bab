"""Time a real vLLM engine per rank tier: decode steps, prefill, adapter loads (JSON out).

Run with the Python of an environment that has vLLM (CUDA or CPU build)::

    python _vllm_probe.py SPEC.json OUT.json

This file is a standalone script: it does not import ``loraserve`` (whose environment has no
vLLM) and ``loraserve`` runs it as a subprocess (:mod:`loraserve.profiles.engine`). ``SPEC``
holds the model's shapes, the tiers, grids and engine limits; ``OUT`` receives every timed
sample plus the engine's versions.

What is timed, per tier ``R`` (one engine built with ``--max-lora-rank R`` and
``load_format="dummy"``: the model's real shapes with random weights, nothing downloaded):

* **decode step** at batch ``b``: ``b`` requests of ``context_tokens`` prompt tokens, each
  with a PEFT adapter of rank ``R`` (``min(b, max_loras)`` distinct ones), are added and
  stepped until every prompt is prefilled; then each of the next ``steps`` engine steps (all
  ``b`` sequences decoding) is timed around ``LLMEngine.step()``: the scheduler, the model,
  the LoRA kernels padded to ``R``, sampling and output processing, as a server runs them;
* **prefill** of ``n`` tokens: one request of ``n`` prompt tokens and one output token; the
  step that prefills it (and samples its first token) is timed;
* **adapter load** of rank ``r``: ``LLMEngine.add_lora`` of a new adapter (reading the PEFT
  checkpoint and building the engine's tensors).

The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so a step's
time is the engine's own, without inter-process hops.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _module_shape(spec: dict[str, Any], module: str) -> tuple[int, int]:
    hidden, inter = spec["hidden_size"], spec["intermediate_size"]
    head_dim = hidden // spec["num_attention_heads"]
    q_out = spec["num_attention_heads"] * head_dim
    kv_out = spec["num_kv_heads"] * head_dim
    shapes = {"q_proj": (hidden, q_out), "k_proj": (hidden, kv_out), "v_proj": (hidden, kv_out),
              "o_proj": (q_out, hidden), "gate_proj": (hidden, inter),
              "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    return shapes[module]


def _write_model(folder: Path, spec: dict[str, Any], max_positions: int) -> None:
    """A Llama ``config.json`` of the given shapes; weights come from ``load_format=dummy``."""
    folder.mkdir(parents=True, exist_ok=True)
    dtype = {2: "bfloat16", 4: "float32", 1: "float16"}[int(spec.get("dtype_bytes", 2))]
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": spec["hidden_size"], "intermediate_size": spec["intermediate_size"],
        "num_hidden_layers": spec["num_layers"],
        "num_attention_heads": spec["num_attention_heads"],
        "num_key_value_heads": spec["num_kv_heads"], "vocab_size": spec["vocab_size"],
        "max_position_embeddings": max_positions, "rms_norm_eps": 1e-5,
        "rope_theta": float(spec.get("rope_theta", 500000.0)), "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
        "torch_dtype": dtype,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def _write_adapter(folder: Path, spec: dict[str, Any], rank: int, modules: list[str],
                   seed: int, base: str) -> None:
    import torch
    from safetensors.torch import save_file  # type: ignore[import-not-found,unused-ignore]

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(spec["num_layers"]):
        for module in modules:
            fan_in, fan_out = _module_shape(spec, module)
            block = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = (
                torch.randn(rank, fan_in, generator=generator) / fan_in**0.5)
            tensors[f"{prefix}.lora_B.weight"] = (
                torch.randn(fan_out, rank, generator=generator) / rank**0.5)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
              "r": rank, "lora_alpha": rank, "lora_dropout": 0.0, "bias": "none",
              "target_modules": modules, "fan_in_fan_out": False, "modules_to_save": None,
              "use_rslora": False, "use_dora": False, "inference_mode": True}
    (folder / "adapter_config.json").write_text(json.dumps(config))


class _Probe:
    """One engine at one tier, and the timings taken on it."""

    def __init__(self, spec: dict[str, Any], tier: int, model: Path, adapters: list[Path]):
        from vllm import LLM  # type: ignore[import-not-found,unused-ignore]

        self.spec = spec
        self.tier = tier
        self.adapters = adapters
        self.counter = 0
        started = time.perf_counter()
        self.llm = LLM(
            model=str(model), load_format="dummy", skip_tokenizer_init=True,
            enable_lora=True, max_lora_rank=tier, max_loras=spec["max_loras"],
            max_cpu_loras=max(spec["max_loras"], len(adapters)),
            max_model_len=spec["max_model_len"], max_num_seqs=spec["max_num_seqs"],
            max_num_batched_tokens=spec["max_num_batched_tokens"],
            dtype=spec["dtype"], seed=spec["seed"], enable_prefix_caching=False,
            **spec.get("engine_args", {}))
        self.engine = self.llm.llm_engine
        self.start_s = time.perf_counter() - started

    def _lora(self, index: int) -> Any:
        from vllm.lora.request import LoRARequest  # type: ignore[import-not-found,unused-ignore]

        path = self.adapters[index % len(self.adapters)]
        return LoRARequest(path.name, 1 + index % len(self.adapters), str(path))

    def _add(self, tokens: int, max_tokens: int, lora_index: int) -> str:
        from vllm import SamplingParams  # type: ignore[import-not-found,unused-ignore]

        self.counter += 1
        request_id = f"probe-{self.counter}"
        # Distinct prompts (no prefix reuse), token ids within the vocabulary.
        vocab = self.spec["vocab_size"]
        ids = [3 + (self.counter * 7919 + i * 31) % (vocab - 3) for i in range(tokens)]
        params = SamplingParams(max_tokens=max_tokens, min_tokens=max_tokens, ignore_eos=True,
                                temperature=0.0, detokenize=False)
        self.engine.add_request(request_id, {"prompt_token_ids": ids}, params,
                                lora_request=self._lora(lora_index))
        return request_id

    def _drain(self) -> None:
        while self.engine.has_unfinished_requests():
            self.engine.step()

    def _timed_step(self) -> tuple[float, list[Any]]:
        began = time.perf_counter()
        outputs = self.engine.step()
        return 1e3 * (time.perf_counter() - began), outputs

    def decode(self, batch: int, steps: int, warmup: int) -> list[float]:
        """Times of ``steps`` decode steps with ``batch`` sequences after ``warmup`` more."""
        context = self.spec["context_tokens"]
        for i in range(batch):
            self._add(context, warmup + steps + 2, i)
        # Prefill every prompt (chunked over several steps when the budget asks for it).
        started: set[str] = set()
        while len(started) < batch:
            for output in self.engine.step():
                if output.outputs and output.outputs[0].token_ids:
                    started.add(output.request_id)
        for _ in range(warmup):
            self.engine.step()
        samples = [self._timed_step()[0] for _ in range(steps)]
        self._drain()
        return samples

    def prefill(self, tokens: int, repeats: int, warmup: int) -> list[float]:
        """Times of the step that prefills one ``tokens``-token prompt, ``repeats`` times."""
        samples = []
        for k in range(warmup + repeats):
            self._add(tokens, 1, k)
            elapsed, _ = self._timed_step()
            self._drain()
            if k >= warmup:
                samples.append(elapsed)
        return samples

    def load(self, path: Path, index: int) -> float:
        from vllm.lora.request import LoRARequest  # type: ignore[import-not-found,unused-ignore]

        began = time.perf_counter()
        self.engine.add_lora(LoRARequest(f"load-{index}", 10_000 + index, str(path)))
        elapsed = 1e3 * (time.perf_counter() - began)
        self.engine.remove_lora(10_000 + index)
        return elapsed


def _versions() -> dict[str, str]:
    import torch
    import vllm  # type: ignore[import-not-found,unused-ignore]

    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else (platform.processor() or "cpu")
    if not cuda:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return {"vllm": str(vllm.__version__), "torch": str(torch.__version__),
            "device": "cuda" if cuda else "cpu", "device_name": name,
            "cuda": str(torch.version.cuda) if cuda else "n/a (CPU)",
            "device_memory_bytes": str(torch.cuda.get_device_properties(0).total_memory
                                       if cuda else 0),
            "python": platform.python_version(), "platform": platform.platform(),
            "threads": str(torch.get_num_threads())}


def main() -> None:
    """Read the spec, time every tier, write the samples."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    spec = json.loads(args.spec.read_text())
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # The caller may keep the model and adapters (to serve them afterwards).
    keep = bool(spec.get("work_dir"))
    work = Path(spec["work_dir"]) if keep else Path(tempfile.mkdtemp(prefix="loraserve-probe-"))
    rows: list[dict[str, Any]] = []
    engines: dict[str, float] = {}
    try:
        model = work / "model"
        _write_model(model, spec, max(spec["max_model_len"], 2048))
        modules = list(spec["target_modules"])
        slots = spec["max_loras"]
        for tier in spec["tiers"]:
            adapters = [work / f"r{tier}-{k}" for k in range(slots)]
            for k, path in enumerate(adapters):
                if not path.exists():
                    _write_adapter(path, spec, tier, modules, spec["seed"] * 1000 + k, str(model))
            probe = _Probe(spec, tier, model, adapters)
            engines[str(tier)] = probe.start_s
            sys.stderr.write(f"tier {tier}: engine up in {probe.start_s:.1f} s\n")
            for batch in spec["batch_sizes"]:
                samples = probe.decode(batch, spec["steps"], spec["warmup"])
                rows.append({"kind": "decode", "tier": tier, "size": batch, "samples": samples})
                sys.stderr.write(f"tier {tier} decode b={batch}: "
                                 f"{statistics.median(samples):.2f} ms\n")
            for tokens in spec["prefill_tokens"]:
                samples = probe.prefill(tokens, spec["repeats"], spec["warmup"])
                rows.append({"kind": "prefill", "tier": tier, "size": tokens,
                             "samples": samples})
                sys.stderr.write(f"tier {tier} prefill n={tokens}: "
                                 f"{statistics.median(samples):.2f} ms\n")
            if tier == max(spec["tiers"]):
                for rank in spec["load_ranks"]:
                    path = work / f"load-r{rank}"
                    _write_adapter(path, spec, rank, modules, 7 + rank, str(model))
                    samples = [probe.load(path, rank * 100 + k)
                               for k in range(spec["warmup"] + spec["repeats"])]
                    rows.append({"kind": "load", "tier": 0, "size": rank,
                                 "samples": samples[spec["warmup"]:]})
            del probe
            import gc

            gc.collect()
        args.out.write_text(json.dumps({"rows": rows, "versions": _versions(),
                                        "engine_start_s": engines}, indent=1))
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
