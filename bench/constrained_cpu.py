"""Constrained decoding on CPU: what the grammar mask costs SmolLM2-135M-Instruct Q4_1.

In one run, through the engine in-process (`cortex.neuron.offline.LLM`, the path the neuron
serves): greedy decode speed for one chat prompt without a schema and with a JSON schema whose
string field cannot end before the run does (`minLength`), so both runs decode the same number
of tokens; then the first-token latency a schema adds by compiling: the llguidance tokenizer
(built once per model, on its first constrained request), a schema's first compilation, and a
schema found in the cache. Decode speed is (tokens - 1) / (time for N tokens - time for 1
token), so the prefill is left out; each figure is the best of `--repeats` runs, the two decode
runs alternating so that load on a shared machine hits both alike. Torch runs as many threads
as the neuron's CPU worker does (`OMP_NUM_THREADS`, else the usable cores minus one).

Usage: `python bench/constrained_cpu.py [--model PATH.gguf] [--tokens 64] [--repeats 3]`.
Without `--model`, the file is fetched once into ~/.cache/cortex-tests (tests/support/smollm2.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Tell me a story about a cat, as JSON."
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "story": {"type": "string", "minLength": 4000}},
    "required": ["title", "story"],
    "additionalProperties": False,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from cortex.api.openai import parse_chat
    from cortex.neuron.engine.sampling import SamplingParams
    from cortex.neuron.engine.worker import cpu_threads
    from cortex.neuron.models.loading import load_model
    from cortex.neuron.offline import LLM
    from cortex.neuron.text.gguf_tokenizer import tokenizer_from_gguf
    from cortex.neuron.text.grammar import compiler_for, request_grammar

    if args.model is None:
        from tests.support.smollm2 import smollm2_gguf

        args.model = smollm2_gguf()
    torch.set_num_threads(cpu_threads())  # as the neuron's CPU worker runs
    print(f"torch threads: {torch.get_num_threads()}, load average: {os.getloadavg()[0]:.1f}")
    tokenizer = tokenizer_from_gguf(args.model)
    llm = LLM(model=load_model(args.model, torch.device("cpu"), None))
    messages = [{"role": "user", "content": PROMPT}]
    prompt = tokenizer.encode_chat(messages)

    def grammar_of(schema: dict) -> tuple[str, str]:
        fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
        req = parse_chat({"model": "m", "messages": messages, "response_format": fmt})
        return request_grammar(req, tokenizer, prompt)

    compiler = compiler_for(tokenizer)
    start = time.perf_counter()
    compiler.lltok  # noqa: B018 - the one-off tokenizer build is what is timed
    lltok_s = time.perf_counter() - start
    compiled = compiler.compile(*grammar_of(SCHEMA))

    def run(tokens: int, constrained: bool) -> list[int]:
        constraint = compiled.constraint() if constrained else None
        params = SamplingParams(
            max_tokens=tokens, temperature=0.0, ignore_eos=not constrained, constraint=constraint
        )
        return llm.generate([prompt], params)[0]

    assert len(run(args.tokens, True)) == args.tokens, "the schema ended the answer early"
    one: dict[bool, list[float]] = {False: [], True: []}
    full: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for constrained in (False, True):
            one[constrained].append(_timed(lambda c=constrained: run(1, c)))
            full[constrained].append(_timed(lambda c=constrained: run(args.tokens, c)))
    rates = {c: (args.tokens - 1) / (min(full[c]) - min(one[c])) for c in (False, True)}
    per_token = {c: 1000 / r for c, r in rates.items()}
    overhead = (per_token[True] - per_token[False]) / per_token[False]
    print(f"{'decode':24}{'tok/s':>10}{'ms/token':>10}")
    print(f"{'no schema':24}{rates[False]:>10.1f}{per_token[False]:>10.2f}")
    print(f"{'JSON schema (masked)':24}{rates[True]:>10.1f}{per_token[True]:>10.2f}")
    print(f"mask cost per token: {per_token[True] - per_token[False]:.2f} ms ({overhead:+.1%})")

    fresh = [{**SCHEMA, "title": f"schema {i}"} for i in range(args.repeats)]
    cold = min(_timed(lambda s=s: compiler.compile(*grammar_of(s))) for s in fresh)
    cached = min(_timed(lambda s=s: compiler.compile(*grammar_of(s))) for s in fresh)
    print(f"{'first-token latency added':32}{'ms':>8}")
    print(f"{'llguidance tokenizer (once)':32}{lltok_s * 1000:>8.1f}")
    print(f"{'schema compile, cold':32}{cold * 1000:>8.2f}")
    print(f"{'schema compile, cached':32}{cached * 1000:>8.3f}")
    answer = tokenizer.decode(run(args.tokens, True))
    print(f"constrained answer starts: {answer[:60]!r}")


def _timed(fn: Callable[[], object]) -> float:
    """Seconds `fn` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
