"""CPU engine benchmark: continuous batching versus the same requests one after another.

Builds a small random Llama-shaped model in memory (no files), then for 1, 8 and 32
concurrent requests prints the generated tokens per second when batched, when run
sequentially, and the ratio. Usage: `python bench/engine_cpu.py [--tokens 64] [--threads 1]`.
"""

from __future__ import annotations

import argparse
import time

import torch

from cortex.config import EngineConfig
from cortex.neuron.engine.sampling import SamplingParams
from cortex.neuron.models.architectures import build_model
from cortex.neuron.models.model_config import ModelConfig
from cortex.neuron.offline import LLM


def random_model(layers: int, hidden: int, vocab: int) -> torch.nn.Module:
    """A Llama-shaped model with random weights, fp32 on the CPU."""
    config = ModelConfig.from_dict(
        {
            "model_type": "llama",
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": hidden * 8 // 3,
            "num_hidden_layers": layers,
            "num_attention_heads": hidden // 64,
            "num_key_value_heads": max(1, hidden // 128),
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6,
            "torch_dtype": "float32",
        }
    )
    model = build_model(config, "cpu", torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    return model


def timed(llm: LLM, prompts: list[list[int]], params: SamplingParams) -> tuple[float, int]:
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    return time.perf_counter() - start, sum(map(len, outputs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8192)
    # One thread by default: on a shared or small machine, torch's intra-op thread pool
    # stalls whenever a thread is descheduled, which swamps what is being measured.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = random_model(args.layers, args.hidden, args.vocab)
    params = sum(p.numel() for p in model.parameters())
    llm = LLM(model=model, config=EngineConfig(max_batch=32, cuda_graphs=False))
    gen = torch.Generator().manual_seed(1)
    sampling = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    print(
        f"model: {params / 1e6:.1f}M params, {args.layers} layers, hidden {args.hidden}; "
        f"{args.tokens} tokens per request; torch threads {torch.get_num_threads()}"
    )
    timed(llm, [[1, 2, 3]], sampling)  # warm-up
    print(f"{'concurrent':>10} {'batched tok/s':>14} {'sequential tok/s':>17} {'ratio':>6}")
    for n in (1, 8, 32):
        prompts = [
            torch.randint(3, args.vocab, (int(torch.randint(16, 64, (1,), generator=gen)),), generator=gen).tolist()
            for _ in range(n)
        ]  # fmt: skip
        batched_s, batched_tokens = timed(llm, prompts, sampling)
        sequential_s, sequential_tokens = 0.0, 0
        for prompt in prompts:
            seconds, tokens = timed(llm, [prompt], sampling)
            sequential_s += seconds
            sequential_tokens += tokens
        batched = batched_tokens / batched_s
        sequential = sequential_tokens / sequential_s
        print(f"{n:>10} {batched:>14.1f} {sequential:>17.1f} {batched / sequential:>5.2f}x")


if __name__ == "__main__":
    main()
