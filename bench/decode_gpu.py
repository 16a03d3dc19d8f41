"""GPU decode benchmark (issue 4): cortex's engine vs HF transformers, same weights, same run.

Per model shape, transformers builds a random-weight model on the device (its own init, in
`--dtype`) and cortex's `CausalLM` copies those tensors by name through its strict
`load_weights`: both sides run the same weights and nothing touches disk. The sides are measured
one after the other in one process; each model is freed before the next. For each side:

- batch-1 greedy decode tok/s from a `--decode-prompt`-token prompt, as in bench/decoder_cpu.py:
  (N - 1) / (time for N tokens - time for 1 token), so prefill is left out;
- its fraction of the roofline: weight bytes one decode step reads (every parameter once, of an
  untied embedding table one row) over the copy bandwidth measured at the start (a large
  device-to-device `tensor.copy_`, bytes read plus bytes written per second);
- TTFT: time to the first token of one `--prompt`-token (2,000) prompt;
- aggregate decode tok/s at `--batches` (8, 32) concurrent sequences.

Every timing is the best of `--repeats`. transformers runs `generate` with a static cache, which on
CUDA compiles its decode step (torch.compile, reduce-overhead); if that raises, plain `generate`
for the rest of that model, noted in the table. Ratios are cortex over transformers (TTFT:
transformers' time over cortex's): above 1, cortex is faster. The engine runs without prefix
caching (repeated prompts would hit it) and at the model's own max context, as a neuron loads it
(40960 for Qwen3, 131072 for Llama 3.2; `--max-context` overrides), its KV cache sized for
`max(--batches)` such sequences within `kv_cache_memory` of the GPU: a decode step costs what the
live context costs, so its figures must not depend on that. transformers' static cache is as long
as the run needs (`--prompt` + `--tokens`), the most favourable length for it: its compiled
decode step attends over the whole cache, and one at the model's max context would not fit at
batch 32.

Issue-4 targets (full-depth models in bf16 on one H100; the script checks them at the end):
- Qwen3-8B batch-1 decode >= 75% of the roofline;
- Qwen3-0.6B batch-1 decode >= 800 tok/s;
- Qwen3-0.6B batch-32 throughput >= 15x its batch-1 rate;
- every figure (batch-1, TTFT, batch 8, batch 32) >= 1.5x transformers' in the same run.

What a GPU session runs. The device machine (see /work/.library/device) has torch, transformers,
aiohttp, typer, tokenizers, safetensors, jinja2, pytest and requests, but not orjson,
platformdirs or gguf. So first, here, from the repository root (`.whl/` is git-ignored; the
fixtures travel with the working tree):

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_17_x86_64 -d .whl \
        orjson==3.13.0 platformdirs==4.14.7 gguf==0.19.0

then one device call with `carry: [".whl"]` and this command (tests, then the smallest model):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
    nvidia-smi
    python3 -m pytest -q tests/gpu tests/engine/test_cuda_graph.py 2>&1 | tee $OUT/pytest.log
    python3 bench/decode_gpu.py --models qwen3-0.6b 2>&1 | tee $OUT/bench-qwen3-0.6b.log

and, each in its own call with the same first two lines (one call may run 10 minutes;
transformers' compiles take most of it), `--models llama-3.2-1b`, then `--models qwen3-8b`.
`--sides cortex` skips transformers for a quick loop while tuning.

CPU smoke test (two layers, a few tokens; proves the script runs end to end, numbers mean
nothing; a smaller max context keeps the KV cache small in RAM): `python bench/decode_gpu.py
--device cpu --layers 2 --models qwen3-0.6b --tokens 8 --batches 2,4 --max-context 4096`.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from decoder_cpu import FIXTURES, best_time, measure

# Qwen/Qwen3-8B's config.json (huggingface.co/Qwen/Qwen3-8B; not among the fixtures).
QWEN3_8B = {
    "model_type": "qwen3",
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000,
    "attention_bias": False,
    "tie_word_embeddings": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "torch_dtype": "bfloat16",
}
MODELS: dict[str, Callable[[], dict]] = {
    "qwen3-0.6b": lambda: json.loads((FIXTURES / "qwen3" / "config.json").read_text()),
    "llama-3.2-1b": lambda: json.loads((FIXTURES / "llama3.2" / "config.json").read_text()),
    "qwen3-8b": lambda: dict(QWEN3_8B),
}
SIDES = ("cortex", "transformers")

# generate(prompts, n): n greedy tokens for each prompt (all prompts the same length).
Generate = Callable[[list[list[int]], int], list[list[int]]]


@dataclass
class Figures:
    """One side's measurements for one model."""

    decode: float  # batch-1 tok/s
    ttft: float  # seconds
    batched: dict[int, float]  # batch size -> aggregate tok/s
    tokens: list[int]  # the batch-1 greedy output, to compare the sides
    note: str = ""


@dataclass
class Run:
    """Settings shared by every model of one run."""

    device: torch.device
    dtype: torch.dtype
    layers: int
    tokens: int
    prompt: int
    decode_prompt: int
    batches: list[int]
    repeats: int
    max_context: int | None  # the engine's; None: the model's own
    sides: list[str]
    results: dict[str, dict[str, Figures]] = field(default_factory=dict)
    bytes_per_token: dict[str, int] = field(default_factory=dict)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    """Return freed memory and compiled graphs before the next model."""
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int, copies: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting the bytes read and written."""
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)

    def run() -> None:
        for _ in range(copies):
            dst.copy_(src)
        synchronize(device)

    run()  # warm-up
    return 2 * nbytes * copies / best_time(run, repeats)


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of weights one batch-1 decode step reads: every parameter once (a tied embedding
    is read whole as the LM head), except an untied embedding table, of which it reads a row."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    if not model.config.tie_word_embeddings:
        embed = model.model.embed_tokens.weight
        total -= (embed.shape[0] - 1) * embed.shape[1] * embed.element_size()
    return total


def build_pair(config: dict, run: Run) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(cortex model, transformers model) with the same random weights, made on the device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from cortex.neuron.models.architectures import build_model
    from cortex.neuron.models.model_config import ModelConfig

    if run.layers:
        config = {**config, "num_hidden_layers": run.layers}
    torch.manual_seed(0)
    with torch.device(run.device):
        hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=run.dtype)
    hf = hf.to(run.device).eval()
    hf.generation_config.eos_token_id = None  # generate the full length, like the engine
    ours = build_model(ModelConfig.from_dict(config), run.device, run.dtype)
    ours.load_weights(hf.named_parameters())
    return ours, hf


def random_prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (count, length), generator=generator).tolist()


def cortex_generate(model: torch.nn.Module, run: Run) -> tuple[Generate, Callable[[], None]]:
    """The engine's generate over `model`, and a function that frees its KV cache and graphs."""
    from cortex.config import EngineConfig
    from cortex.neuron.engine.sampling import SamplingParams
    from cortex.neuron.offline import LLM

    config = EngineConfig(
        max_batch=max(run.batches),
        prefix_cache=False,
        cuda_graphs=run.device.type == "cuda",
    )
    llm = LLM(model=model, config=config, max_context=run.max_context)
    print(f"  cortex max context {llm.engine.max_context}, decode {llm.engine.stats().graphs}")

    def generate(prompts: list[list[int]], n: int) -> list[list[int]]:
        params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
        return llm.generate(prompts, params)

    return generate, llm.engine.close


class TransformersGenerate:
    """HF `generate` with a static cache of `max_context`; after a failure, plain `generate`
    (noted)."""

    def __init__(self, model: torch.nn.Module, max_context: int) -> None:
        from transformers import GenerationConfig

        self.model = model
        self.static: dict = {"cache_implementation": "static"}
        if hasattr(GenerationConfig(), "max_cache_len"):  # newer transformers: the run's length
            self.static["max_cache_len"] = max_context
        compiled = model.device.type == "cuda"
        self.note = "static cache + torch.compile" if compiled else "static cache"

    def __call__(self, prompts: list[list[int]], n: int) -> list[list[int]]:
        if self.static:
            try:
                return self._generate(prompts, n, self.static)
            except Exception as exc:  # any compile or static-cache failure: measure plain
                print(f"  transformers: static cache failed ({exc!r:.200}); plain generate")
                self.static = {}
                self.note = f"plain generate ({type(exc).__name__} with static cache)"
                release(self.model.device)
        return self._generate(prompts, n, {})

    def _generate(self, prompts: list[list[int]], n: int, options: dict) -> list[list[int]]:
        ids = torch.tensor(prompts, device=self.model.device)
        out = self.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
            **options,
        )
        return out[:, ids.shape[1] :].tolist()


def measure_side(generate: Generate, run: Run, vocab: int) -> Figures:
    """Every figure for one side (the same prompts for both sides)."""
    short = random_prompts(max(run.batches), run.decode_prompt, vocab, seed=1)
    long = random_prompts(1, run.prompt, vocab, seed=2)

    def rate(prompts: list[list[int]]) -> tuple[float, list[int]]:
        def flat(n: int) -> list[int]:
            return [t for out in generate(prompts, n) for t in out]

        _, per_sequence, tokens = measure(flat, run.tokens, run.repeats)
        return per_sequence * len(prompts), tokens

    decode, tokens = rate(short[:1])
    generate(long, 1)  # warm-up at this prompt length
    ttft = best_time(lambda: generate(long, 1), run.repeats)
    batched = {b: rate(short[:b])[0] for b in run.batches}
    return Figures(decode, ttft, batched, tokens)


def bench_model(name: str, run: Run) -> None:
    """Build one model pair, measure the chosen sides, free everything."""
    config = MODELS[name]()
    start = time.perf_counter()
    ours, hf = build_pair(config, run)
    run.bytes_per_token[name] = weight_bytes_per_token(ours)
    gib = run.bytes_per_token[name] / 2**30
    print(f"{name}: built in {time.perf_counter() - start:.1f}s, {gib:.2f} GiB read per token")
    vocab = config["vocab_size"]
    results: dict[str, Figures] = {}
    if "cortex" in run.sides:
        start = time.perf_counter()
        generate, close = cortex_generate(ours, run)
        results["cortex"] = measure_side(generate, run, vocab)
        close()
        del generate, close
        print(f"  cortex measured in {time.perf_counter() - start:.0f}s")
    del ours
    release(run.device)
    if "transformers" in run.sides:
        start = time.perf_counter()
        side = TransformersGenerate(hf, run.prompt + run.tokens)
        results["transformers"] = measure_side(side, run, vocab)
        results["transformers"].note = side.note
        del side
        print(f"  transformers measured in {time.perf_counter() - start:.0f}s")
    del hf
    if run.device.type == "cuda":
        print(f"  peak device memory {torch.cuda.max_memory_allocated(run.device) / 2**30:.1f} GiB")
        torch.cuda.reset_peak_memory_stats(run.device)
    release(run.device)
    run.results[name] = results


def agreeing_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two greedy outputs share."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def print_table(run: Run, bandwidth: float) -> None:
    """One row per side and model, a ratio row when both sides ran, then the targets."""
    batch_cols = "".join(f"{f'b{b} tok/s':>12}" for b in run.batches)
    print(
        f"\n{'model':14}{'side':>14}{'b1 tok/s':>10}{'roofline':>10}{'TTFT ms':>10}{batch_cols}  note"
    )
    for name, results in run.results.items():
        roofline = bandwidth / run.bytes_per_token[name]  # tok/s if weights streamed at copy speed
        for side, f in results.items():
            cells = "".join(f"{f.batched[b]:>12.1f}" for b in run.batches)
            frac = f"{f.decode / roofline:.0%}"
            print(
                f"{name:14}{side:>14}{f.decode:>10.1f}{frac:>10}{f.ttft * 1e3:>10.1f}{cells}  {f.note}"
            )
        if len(results) == len(SIDES):
            ours, theirs = results["cortex"], results["transformers"]
            cells = "".join(
                f"{ratio(ours.batched[b], theirs.batched[b]):>11.2f}x" for b in run.batches
            )
            same = agreeing_prefix(ours.tokens, theirs.tokens)
            print(
                f"{name:14}{'ratio':>14}{ratio(ours.decode, theirs.decode):>9.2f}x{'':>10}"
                f"{ratio(theirs.ttft, ours.ttft):>9.2f}x{cells}  greedy tokens agree: {same}"
            )
    print_targets(run, bandwidth)


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.inf


def print_targets(run: Run, bandwidth: float) -> None:
    """The issue-4 targets that this run's models and sides allow checking."""
    checks: list[tuple[str, float, float]] = []  # (what, value, minimum)
    for name, results in run.results.items():
        ours = results.get("cortex")
        if ours is None:
            continue
        if name == "qwen3-8b":
            checks.append(
                (f"{name} b1 roofline", ours.decode * run.bytes_per_token[name] / bandwidth, 0.75)
            )
        if name == "qwen3-0.6b":
            checks.append((f"{name} b1 tok/s", ours.decode, 800.0))
            if 32 in run.batches:
                checks.append((f"{name} b32 / b1", ours.batched[32] / ours.decode, 15.0))
        theirs = results.get("transformers")
        if theirs is not None:
            pairs = [("b1", ours.decode, theirs.decode), ("TTFT", theirs.ttft, ours.ttft)]
            pairs += [(f"b{b}", ours.batched[b], theirs.batched[b]) for b in run.batches]
            checks += [(f"{name} {what} vs transformers", ratio(a, b), 1.5) for what, a, b in pairs]
    full = run.layers == 0 and run.device.type == "cuda"
    print(f"\nissue-4 targets{'' if full else ' (only meaningful at full depth on an H100)'}:")
    for what, value, minimum in checks:
        print(
            f"  {what:40}{value:>10.2f}  >= {minimum:<6g}{'ok' if value >= minimum else 'MISSED'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=", ".join(MODELS))
    parser.add_argument("--sides", default=",".join(SIDES), help=", ".join(SIDES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--layers", type=int, default=0, help="layers per model (0: full depth)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens decoded per run")
    parser.add_argument("--prompt", type=int, default=2000, help="TTFT prompt tokens")
    parser.add_argument("--decode-prompt", type=int, default=32, help="decode prompt tokens")
    parser.add_argument("--batches", default="8,32", help="concurrent sequences to measure")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-context", type=int, default=0, help="0: the model's own")
    parser.add_argument("--copy-mib", type=int, default=0, help="0: 2048 on CUDA, 256 on CPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; run it on a GPU host, or try --device cpu --layers 2")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    run = Run(
        device=device,
        dtype=getattr(torch, args.dtype),
        layers=args.layers,
        tokens=args.tokens,
        prompt=args.prompt,
        decode_prompt=args.decode_prompt,
        batches=[int(b) for b in args.batches.split(",")],
        repeats=args.repeats,
        max_context=args.max_context or None,
        sides=[s for s in args.sides.split(",") if s],
    )
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    unknown += [s for s in run.sides if s not in SIDES]
    if unknown:
        raise SystemExit(f"unknown model or side: {', '.join(unknown)}")
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    copy_mib = args.copy_mib or (2048 if device.type == "cuda" else 256)
    bandwidth = copy_bandwidth(device, copy_mib * 2**20, args.repeats)
    release(device)
    print(
        f"{name}: copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write); torch "
        f"{torch.__version__}, transformers {transformers.__version__}; {args.dtype}, "
        f"layers {args.layers or 'full'}, {run.tokens} tokens, TTFT prompt {run.prompt}, "
        f"decode prompt {run.decode_prompt}, cortex max context {run.max_context or 'of the model'}"
    )
    for model in args.models.split(","):
        bench_model(model, run)
    print_table(run, bandwidth)


if __name__ == "__main__":
    main()
