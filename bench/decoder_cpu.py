"""CPU decoder benchmark: batch-1 greedy decode and prefill, cortex's engine vs transformers.

For each model, both sides load the same fp32 weights and generate greedily from the same
prompt, measured in the same run. Decode speed is (N - 1) / (time for N tokens - time for 1
token), so the prompt's prefill is left out; prefill time is the time to the first token.
Every timing is the best of `--repeats` runs (on a shared machine the minimum is the least
disturbed figure). Models:

- `stories260k`: the real 260K-parameter Llama fixture (per-step overhead dominates);
- `smollm2`: random weights with SmolLM2-135M's shapes (hidden 576, 9/3 heads, vocab 49152);
- `qwen3`: random weights with Qwen3-0.6B's shapes (from the fixture's config.json);
- `qwen3_moe`, `gemma2`, `gemma3`, `phi3`: random weights, small shapes of each architecture
  (hidden 512, SmolLM2's vocabulary; 16 experts, top 4, for the MoE; windows of 16 tokens, shorter
  than prompt + output, for Gemma), transformers with eager attention for Gemma 2 (its soft-cap needs it);

the random ones with `--layers` layers (default 4) instead of their full depth.

Usage: `python bench/decoder_cpu.py [--models stories260k,smollm2,qwen3,qwen3_moe,gemma2,gemma3,phi3]
[--tokens 64] [--prompt 32] [--layers 4] [--threads 1] [--repeats 3]`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
# SmolLM2-135M's config.json (not among the fixtures: only its chat template is).
SMOLLM2 = {
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

_SMALL = {
    "vocab_size": 49152,
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "max_position_embeddings": 4096,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
ARCHITECTURES = {
    "qwen3_moe": {
        **_SMALL,
        "model_type": "qwen3_moe",
        "num_experts": 16,
        "num_experts_per_tok": 4,
        "moe_intermediate_size": 384,
        "norm_topk_prob": True,
    },
    "gemma2": {**_SMALL, "model_type": "gemma2", "sliding_window": 16, "query_pre_attn_scalar": 64},
    "gemma3": {
        **_SMALL,
        "model_type": "gemma3_text",
        "sliding_window": 16,
        "sliding_window_pattern": 2,
    },
    "phi3": {
        **_SMALL,
        "model_type": "phi3",
        "num_key_value_heads": 8,
        "tie_word_embeddings": False,
    },
}


def random_checkpoint(config: dict, layers: int, path: Path) -> Path:
    """Save a random-weight HF checkpoint with `config`'s shapes and `layers` layers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    overrides = {"num_hidden_layers": layers, "torch_dtype": "float32"}
    hf_config = AutoConfig.for_model(**{**config, **overrides})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(hf_config).save_pretrained(path)
    return path


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of `repeats` calls of `fn`, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(
    generate: Callable[[int], list[int]], tokens: int, repeats: int
) -> tuple[float, float, list[int]]:
    """(prefill seconds, decode tok/s, the `tokens` generated ids) for one side."""
    generate(tokens)  # warm-up: first-call allocations and kernel selection
    first = best_time(lambda: generate(1), repeats)
    full = best_time(lambda: generate(tokens), repeats)
    return first, (tokens - 1) / max(full - first, 1e-9), generate(tokens)


def cortex_side(path: Path, prompt: list[int]) -> Callable[[int], list[int]]:
    from cortex.config import EngineConfig
    from cortex.neuron.engine.sampling import SamplingParams
    from cortex.neuron.offline import LLM

    llm = LLM(path, "cpu", torch.float32, config=EngineConfig(max_batch=8, cuda_graphs=False))

    def generate(n: int) -> list[int]:
        params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
        return llm.generate([prompt], params)[0]

    return generate


def transformers_side(path: Path, prompt: list[int]) -> Callable[[int], list[int]]:
    from transformers import AutoModelForCausalLM

    # Gemma 2's attention soft-cap exists only in transformers' eager attention.
    gemma2 = json.loads((path / "config.json").read_text())["model_type"] == "gemma2"
    attention = {"attn_implementation": "eager"} if gemma2 else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **attention).eval()
    ids = torch.tensor([prompt])

    def generate(n: int) -> list[int]:
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )
        return out[0, len(prompt) :].tolist()

    return generate


def model_path(name: str, layers: int, scratch: Path) -> Path:
    if name == "stories260k":
        return FIXTURES / "stories260k"
    if name == "smollm2":
        config = SMOLLM2
    elif name == "qwen3":
        config = json.loads((FIXTURES / "qwen3" / "config.json").read_text())
    elif name in ARCHITECTURES:
        config = ARCHITECTURES[name]
    else:
        raise SystemExit(f"unknown model {name!r}")
    return random_checkpoint(config, layers, scratch / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default=",".join(["stories260k", "smollm2", "qwen3", *ARCHITECTURES])
    )
    parser.add_argument("--tokens", type=int, default=64, help="tokens decoded per run")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--layers", type=int, default=4, help="layers of the random models")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}, load average: {os.getloadavg()[0]:.1f}")
    header = f"{'model':12}{'side':>14}{'prefill ms':>12}{'decode tok/s':>14}"
    print(f"{header}{'ratio':>8}{'same tokens':>13}")
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            path = model_path(name, args.layers, Path(scratch))
            vocab = json.loads((path / "config.json").read_text())["vocab_size"]
            prompt = torch.randint(
                3, vocab, (args.prompt,), generator=torch.Generator().manual_seed(1)
            )
            ids = prompt.tolist()
            ours = measure(cortex_side(path, ids), args.tokens, args.repeats)
            theirs = measure(transformers_side(path, ids), args.tokens, args.repeats)
            for side, (prefill, rate, _) in (("cortex", ours), ("transformers", theirs)):
                print(f"{name:12}{side:>14}{prefill * 1e3:>12.1f}{rate:>14.1f}", end="")
                if side == "cortex":
                    print(f"{rate / theirs[1]:>7.2f}x{str(ours[2] == theirs[2]):>13}")
                else:
                    print()
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
