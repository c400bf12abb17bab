"""The profiler's subcommand (``profile``): measure, check or plot a cost profile.

torch is imported only when a measurement runs (``pip install loraserve[profile]``), so the
rest of the CLI works without it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from loraserve.models import ConfigError
from loraserve.models.base_model import ALL_LINEAR_MODULES
from loraserve.models.io import check_outputs

EXIT_OK, EXIT_FAIL = 0, 1


def _ints(text: str) -> tuple[int, ...]:
    """A list of whole numbers: ``8,16,32`` or ``8 16 32``."""
    try:
        values = tuple(int(part) for part in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of whole numbers") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one number")
    return values


def _modules(text: str) -> tuple[str, ...]:
    names = tuple(part for part in text.replace(",", " ").split() if part)
    unknown = [n for n in names if n not in ALL_LINEAR_MODULES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"'{unknown[0] if unknown else text}' is not a target module; use "
            f"{', '.join(ALL_LINEAR_MODULES)}")
    return names


def _profiler() -> ModuleType:
    try:
        from loraserve.profiles import profiler
    except ImportError as exc:
        raise ConfigError(f"profile needs torch ({exc}); install it with "
                          "pip install 'loraserve[profile]'") from None
    return profiler


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def _progress(args: argparse.Namespace) -> Any:
    if args.quiet:
        return None

    def show(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    return show


def _flat(groups: list[tuple[Any, ...]] | None) -> tuple[Any, ...] | None:
    """``--tiers 8 16,32`` -> (8, 16, 32): values may be spaced or comma-separated."""
    return None if groups is None else tuple(v for group in groups for v in group)


def _command(args: argparse.Namespace) -> str:
    """The measuring command, rebuilt from the parsed options (for the provenance)."""
    words = ["loraserve", "profile"]
    skip = {"command", "func", "check", "plot", "quiet", "max_error", "verbose"}
    for name, value in vars(args).items():
        if name in skip or value is None or value is False:
            continue
        flag = "-o" if name == "output" else "--" + name.replace("_", "-")
        if value is True:
            words.append(flag)
        elif isinstance(value, tuple):
            words += [flag, *(str(v) for v in value)]
        else:
            words += [flag, shlex.quote(str(value))]
    return " ".join(words)


def _cmd_profile(args: argparse.Namespace) -> int:
    for name in ("tiers", "batch_sizes", "prefill_tokens", "load_ranks", "target_modules"):
        setattr(args, name, _flat(getattr(args, name)))
    if args.check:
        return _cmd_check(args)
    if args.plot:
        profiler = _profiler()
        path = profiler.plot_profile(args.plot, args.output)
        _out(f"plot written to {path}")
        return EXIT_OK
    if not args.model:
        raise ConfigError("--model: give a preset or a YAML file of shapes to measure "
                          "(or --check PROFILE, or --plot PROFILE)")
    if not args.output:
        raise ConfigError("-o/--output: give the profile file to write (for example "
                          "H100-80GB/llama-3-8b.measured.yaml); the raw CSV goes beside it")
    if args.engine == "vllm":
        return _cmd_engine(args)
    if args.context_tokens is None:
        args.context_tokens = 1024
    profiler = _profiler()
    spec = profiler.load_model_spec(args.model)
    # The targets are checked before minutes of measuring, not after.
    output = Path(args.output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"-o {output}: cannot create its folder "
                          f"({exc.strerror or exc})") from None
    check_outputs({"-o": output, "the raw CSV": profiler.raw_csv_path(output)},
                  {"--model": args.model if Path(args.model).is_file() else None})
    settings = profiler.ProfilerSettings(
        base_model=spec, tiers=args.tiers, batch_sizes=args.batch_sizes,
        prefill_tokens=args.prefill_tokens, load_ranks=args.load_ranks,
        context_tokens=args.context_tokens, lora_slots=args.lora_slots,
        target_modules=args.target_modules or ALL_LINEAR_MODULES, layers=args.layers,
        repeats=args.repeats if args.repeats is not None else 10,
        warmup=args.warmup if args.warmup is not None else 3,
        min_sample_ms=args.min_sample_ms, prefill_sequence_tokens=args.prefill_sequence_tokens,
        passes=args.passes, rechecks=args.rechecks, threads=args.threads, cpu_clock=args.cpu_clock,
        grouped=not args.no_grouped, cuda_graphs=not args.no_cuda_graphs, device=args.device,
        gpu_type=args.gpu_type, seed=args.seed, command=_command(args))
    run = profiler.measure(settings, progress=_progress(args))
    raw = run.save(output)
    profile = run.profile
    _out(_summary(profile, run.measurements))
    _out(f"profile written to {output}; raw measurements to {raw}")
    return EXIT_OK


def _cmd_engine(args: argparse.Namespace) -> int:
    """``--engine vllm``: time the real vLLM engine in its own environment."""
    import os

    from loraserve.profiles import engine
    from loraserve.profiles.fitting import load_model_spec

    python = args.vllm_python or os.environ.get("LORASERVE_VLLM_PYTHON")
    if not python:
        raise ConfigError("--vllm-python: give the Python of an environment with vLLM (or "
                          "set LORASERVE_VLLM_PYTHON)")
    options: dict[str, Any] = {
        "base_model": load_model_spec(args.model), "python": Path(python),
        "max_loras": args.lora_slots, "command": _command(args), "seed": args.seed,
        "serve": not args.no_serve, "cpus": args.cpus, "gpu_type": args.gpu_type,
    }
    for name in ("tiers", "batch_sizes", "prefill_tokens", "load_ranks", "target_modules",
                 "max_num_seqs", "max_num_batched_tokens", "max_model_len", "context_tokens",
                 "steps", "repeats", "warmup", "dtype"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    settings = engine.EngineSettings(**options)
    run = engine.measure_engine(settings, progress=_progress(args))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    raw = run.save(output)
    profile = run.profile
    _out(_engine_summary(profile))
    _out(f"profile written to {output}; raw samples to {raw}")
    return EXIT_OK


def _engine_summary(profile: Any) -> str:
    """Decode and prefill per tier, with the slowdown against the lowest tier."""
    base = profile.tier_values[0]
    batch, tokens = profile.batch_sizes[-1], profile.prefill_tokens[-1]
    lines = [f"{profile.base_model} on {profile.gpu_type} "
             f"({profile.provenance.get('device_name', '')}, "
             f"{profile.provenance.get('engine', '')}); x = vs tier {base}",
             f"{'tier':>5} {'decode b1 ms':>13} {f'decode b{batch} ms':>16} "
             f"{f'prefill {tokens} ms':>17}"]
    for tier in profile.tier_values:
        d1, db = profile.decode_ms(tier, 1), profile.decode_ms(tier, batch)
        pf = profile.prefill_ms(tier, tokens)
        lines.append(f"{tier:>5} {d1:>13.2f} {db:>9.2f} {db / profile.decode_ms(base, batch):5.2f}x"
                     f" {pf:>10.2f} {pf / profile.prefill_ms(base, tokens):5.2f}x")
    if profile.request_overhead_ms:
        lines.append(f"request overhead through the server: {profile.request_overhead_ms:.2f} ms")
    return "\n".join(lines)


def _summary(profile: Any, rows: Any) -> str:
    """Decode latency per tier at a few batch sizes, slowdown vs the lowest tier, padding."""
    batches = list(profile.batch_sizes)
    shown = batches if len(batches) <= 5 else sorted(
        {batches[0], batches[-1], *(b for b in (8, 32, 128) if b in batches)})
    base_tier = profile.tier_values[0]
    grouped = {(r.tier, r.size): r.model_ms for r in rows
               if r.kind == "decode" and r.variant == "grouped"}
    raw = {(r.tier, r.size): r.model_ms for r in rows
           if r.kind == "decode" and r.variant == "padded"}
    lines = [f"{profile.base_model} on {profile.gpu_type} "
             f"({profile.provenance.get('device_name', '')}), whole-model decode step (ms); "
             f"x = vs tier {base_tier}; padded/grouped = raw medians"]
    lines.append(f"{'tier':>5} " + " ".join(f"{'b' + str(b):>22}" for b in shown))
    for tier in profile.tier_values:
        cells = []
        for b in shown:
            ms = profile.decode_ms(tier, b)
            slow = ms / profile.decode_ms(base_tier, b)
            ratio = (f" {raw[(tier, b)] / grouped[(tier, b)]:.2f}"
                     if (tier, b) in grouped and (tier, b) in raw else "")
            cells.append(f"{ms:9.2f} {slow:5.2f}x{ratio:>6}")
        lines.append(f"{tier:>5} " + " ".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def _cmd_check(args: argparse.Namespace) -> int:
    profiler = _profiler()
    from loraserve.profiles.library import load_profile

    profile = load_profile(args.check)
    report = profiler.check_profile(profile, tiers=args.tiers, repeats=args.repeats,
                                    warmup=args.warmup, threads=args.threads,
                                    seed=args.seed + 1,
                                    progress=_progress(args))
    _out(f"{'kind':<8} {'tier':>5} {'size':>6} {'measured ms':>12} {'profile ms':>11} "
         f"{'error':>8} {'session ms':>11} {'error':>8}")
    for point in report.points:
        _out(f"{point.kind:<8} {point.tier:>5} {point.size:>6} {point.measured_ms:>12.3f} "
             f"{point.predicted_ms:>11.3f} {point.error:>+8.1%} {point.session_ms:>11.3f} "
             f"{point.session_error:>+8.1%}")
    for kind in ("decode", "prefill"):
        if report.abs_errors(kind):
            _out(f"{kind}: held-out median |error| {report.median_abs_error(kind):.1%} (max "
                 f"{report.max_abs_error(kind):.1%}) against the profile, "
                 f"{report.median_abs_error(kind, session=True):.1%} (max "
                 f"{report.max_abs_error(kind, session=True):.1%}) against this session's grid,"
                 f" over {len(report.abs_errors(kind))} points; grid drift since the profile "
                 f"{report.median_drift(kind):.1%}")
    median = report.median_abs_error("decode")
    _out(f"held-out step latency: median |error| {median:.1%} "
         f"({profile.gpu_type}, {profile.provenance.get('device_name', '')})")
    if args.max_error is not None and median > args.max_error / 100.0:
        _out(f"fail: median |error| {median:.1%} exceeds --max-error {args.max_error:g}%")
        return EXIT_FAIL
    return EXIT_OK


def register(sub: Any) -> None:
    """Add the profiler's subcommand to the ``loraserve`` parser's ``sub``."""
    parser = sub.add_parser(
        "profile", help="measure a rank-dependent cost profile with torch; check or plot one",
        description="Measure decode, prefill and adapter-load latency per rank tier with "
                    "torch (CUDA when present, CPU otherwise) and write a profile plus its raw "
                    "CSV; or re-measure held-out points of a profile (--check); or plot its "
                    "measurements (--plot).")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", metavar="PROFILE",
                      help="re-measure held-out batch sizes and token counts; print the error")
    mode.add_argument("--plot", metavar="PROFILE",
                      help="plot step latency vs batch, per tier, padded vs grouped "
                           "(PNG at -o, default beside the profile)")
    parser.add_argument("--model", help="base-model preset (llama-3-8b, mistral-7b, ...) or a "
                                        "YAML file of shapes")
    parser.add_argument("-o", "--output", help="profile file to write (with --plot: the PNG)")
    parser.add_argument("--engine", choices=("torch", "vllm"), default="torch",
                        help="torch: time loraserve's own layers (default); vllm: time the real "
                             "vLLM engine (load_format=dummy) in the environment of "
                             "--vllm-python")
    engine = parser.add_argument_group("with --engine vllm")
    engine.add_argument("--vllm-python", help="Python of the vLLM environment (default "
                                              "$LORASERVE_VLLM_PYTHON)")
    engine.add_argument("--max-num-seqs", type=int, help="vLLM --max-num-seqs (default 16)")
    engine.add_argument("--max-num-batched-tokens", type=int,
                        help="vLLM --max-num-batched-tokens (default 512)")
    engine.add_argument("--max-model-len", type=int, help="vLLM --max-model-len (default 512)")
    engine.add_argument("--steps", type=int, help="decode steps timed per batch (default 20)")
    engine.add_argument("--dtype", help="vLLM --dtype (default float32)")
    engine.add_argument("--cpus", help="pin the engine to these CPUs (taskset -c list)")
    engine.add_argument("--no-serve", action="store_true",
                        help="skip the server phase that measures the per-request overhead")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="default: CUDA when present, else CPU")
    parser.add_argument("--gpu-type", help="profile key (default: from the GPU's name, "
                                           "'CPU' on CPU)")
    parser.add_argument("--tiers", type=_ints, nargs="+",
                        help="rank tiers (default 8 16 32 64 128 256; with --check: tiers "
                             "to re-measure)")
    parser.add_argument("--batch-sizes", type=_ints, nargs="+", help="decode batch sizes")
    parser.add_argument("--prefill-tokens", type=_ints, nargs="+", help="prefill token counts")
    parser.add_argument("--load-ranks", type=_ints, nargs="+", help="adapter ranks to time loading "
                                                         "(default: the tiers)")
    parser.add_argument("--context-tokens", type=int,
                        help="KV-cache tokens per sequence in decode (default 1024; 64 with "
                             "--engine vllm)")
    parser.add_argument("--lora-slots", type=int, default=16,
                        help="stacked adapter slots, vLLM --max-loras (default 16)")
    parser.add_argument("--target-modules", type=_modules, nargs="+",
                        help="modules the adapters modify (default: all seven)")
    parser.add_argument("--layers", type=int, default=2,
                        help="decoder layers built and timed; scaled by depth (default 2)")
    parser.add_argument("--repeats", type=int, help="timed samples per point (default 10)")
    parser.add_argument("--warmup", type=int, help="untimed runs per point (default 3)")
    parser.add_argument("--min-sample-ms", type=float, default=1.0,
                        help="repeat tiny calls within a sample up to this long (default 1)")
    parser.add_argument("--prefill-sequence-tokens", type=int, default=512,
                        help="tokens per sequence in a prefill pass (default 512)")
    parser.add_argument("--passes", type=int, default=1,
                        help="full sweeps; each point keeps its lowest median (default 1)")
    parser.add_argument("--rechecks", type=int, default=2,
                        help="rounds that re-measure points slower than a neighbour with more "
                             "work, keeping the lower median (default 2; 0 turns it off)")
    parser.add_argument("--threads", type=int,
                        help="CPU threads for torch (default: torch's choice; 1 is steadiest "
                             "on a shared machine)")
    parser.add_argument("--cpu-clock", choices=("wall", "process"), default="wall",
                        help="on CPU: wall time, or the process's CPU time (with --threads 1: "
                             "the latency on an unshared core, steady on a busy machine)")
    parser.add_argument("--no-grouped", action="store_true",
                        help="skip the unpadded rank-grouped (S-LoRA) decode variant")
    parser.add_argument("--no-cuda-graphs", action="store_true",
                        help="time decode eagerly on CUDA")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-error", type=float, metavar="PCT",
                        help="with --check: exit 1 when the median decode error exceeds PCT")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=_cmd_profile)
