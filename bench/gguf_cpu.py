"""GGUF on CPU: load time and greedy decode speed of SmolLM2-135M-Instruct Q4_1, cortex vs transformers.

Both load the same 98 MB file in fp32 (transformers through `from_pretrained(gguf_file=...)`),
then generate the same number of tokens greedily for one chat prompt. Decode speed is measured
as (tokens - 1) / (time for N tokens - time for 1 token), so the prompt's prefill is left out.
cortex decodes through its engine (`cortex.neuron.engine.LLM`), the path the neuron serves.

Usage: `python bench/gguf_cpu.py [--model PATH.gguf] [--tokens 64] [--threads N]`. Without
`--model`, the file is fetched once into ~/.cache/cortex-tests (see tests/support/smollm2.py).
The machine's load average is printed: on a shared machine the numbers move with it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "What is the capital of France?"
T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """(seconds, result) of calling `fn`."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def decode_rate(generate: Callable[[int], object], tokens: int) -> float:
    """Tokens per second after the first token, from a 1-token and a `tokens`-token run."""
    first, _ = timed(lambda: generate(1))
    full, _ = timed(lambda: generate(tokens))
    return (tokens - 1) / max(full - first, 1e-9)


def bench_cortex(path: Path, tokens: int) -> tuple[float, float, str]:
    from cortex.neuron.engine.sampling import SamplingParams
    from cortex.neuron.models.loading import load_model
    from cortex.neuron.offline import LLM
    from cortex.neuron.text.gguf_tokenizer import tokenizer_from_gguf

    load, (model, tokenizer) = timed(
        lambda: (load_model(path, torch.device("cpu"), None), tokenizer_from_gguf(path))
    )
    llm = LLM(model=model)
    prompt = tokenizer.encode_chat([{"role": "user", "content": PROMPT}])

    def generate(n: int) -> list[int]:
        params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
        return llm.generate([prompt], params)[0]

    rate = decode_rate(generate, tokens)
    answer = tokenizer.decode(llm.generate([prompt], SamplingParams(temperature=0.0))[0])
    return load, rate, answer


def bench_transformers(path: Path, tokens: int) -> tuple[float, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load, model = timed(
        lambda: AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        ).eval()
    )
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt

    def generate(n: int) -> torch.Tensor:
        with torch.no_grad():
            return model.generate(
                ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=2
            )

    return load, decode_rate(generate, tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a .gguf file (default: SmolLM2 Q4_1)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens decoded per run")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.model
    if path is None:
        sys.path.insert(0, str(ROOT))
        from tests.support.smollm2 import smollm2_gguf

        path = smollm2_gguf()
    print(f"model: {path} ({path.stat().st_size / 1e6:.0f} MB)")
    print(f"torch threads: {torch.get_num_threads()}, load average: {os.getloadavg()[0]:.1f}")
    load, rate, answer = bench_cortex(path, args.tokens)
    hf_load, hf_rate = bench_transformers(path, args.tokens)
    print(f"{'':14}{'load s':>10}{'decode tok/s':>15}")
    print(f"{'cortex':14}{load:>10.2f}{rate:>15.1f}")
    print(f"{'transformers':14}{hf_load:>10.2f}{hf_rate:>15.1f}")
    print(f"cortex answer to {PROMPT!r}: {answer!r}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
