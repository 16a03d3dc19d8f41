"""Batch-1 decode on CPU, side by side in one run: `cortex neuron` (defaults, streamed over HTTP)
vs llama.cpp (llama-cpp-python, in-process) vs transformers (bf16, static cache).

All three decode 128 tokens greedily after the same ~500-token prompt from the same GGUF file
(default: SmolLM2-135M-Instruct Q4_1, fetched once into ~/.cache/cortex-tests). The decode rate
is (tokens - 1) / (time of the last token - time of the first), so the prefill is left out; the
prefill time (request to first token) is printed beside it; that second request finds its
prompt cached (cortex's prefix cache, llama.cpp's prompt cache), so a prefill from scratch is
measured apart, in process: cortex's quantized default against its exact fp32 path. A second
cortex row runs torch's ops only (`CORTEX_CPU_KERNELS=off`: SDPA attention and torch's RMSNorm
instead of the C kernels of models/cpu_kernels.c), to show what the kernels give.

llama.cpp runs in whatever Python has `llama_cpp` (build llama-cpp-python from source in its
own venv, e.g. `CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_BLAS=OFF" pip install
llama-cpp-python==0.3.36`) and pass that interpreter with `--llama-python`; without one, the
row is skipped with a note.

Usage: `python bench/llamacpp_cpu.py [--model PATH.gguf] [--threads 2] [--llama-python PY]`.
The load average is printed before and after: on a shared machine the figures move with it,
so compare the rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKENS = 128
# ~500 tokens of plain prose (SmolLM2's tokenizer), identical for every engine.
PROMPT = ("The history of the river valley is long and varied, shaped by floods, trade and the "
          "slow work of farmers who cleared the land. ") * 22 + "Summarize this in one story:"  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_rate(chunks) -> tuple[float, float, int]:
    """(prefill seconds, decode tok/s, tokens) from an iterator of streamed pieces."""
    start = time.perf_counter()
    stamps = [time.perf_counter() for _ in chunks]
    decode = (len(stamps) - 1) / max(stamps[-1] - stamps[0], 1e-9)
    return stamps[0] - start, decode, len(stamps)


def bench_cortex(
    path: Path, threads: int, extra_env: dict[str, str] | None = None
) -> tuple[float, float, int]:
    """Start `cortex neuron` with its defaults (and `extra_env`) on loopback, load the file,
    stream one request."""
    import requests

    port = free_port()
    config = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-neuron-{port}.toml"
    config.write_text(f"[engine]\nthreads = {threads}\n")
    cmd = [sys.executable, "-m", "cortex", "neuron", "-c", str(config)]
    cmd += ["--listen", f"127.0.0.1:{port}", "--models-dir", str(path.parent)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                requests.get(f"{url}/health", timeout=1).raise_for_status()
                break
            except requests.RequestException:
                time.sleep(0.1)
        loaded = requests.post(f"{url}/models/load", json={"model": path.name}, timeout=600)
        loaded.raise_for_status()
        print(f"cortex loaded: {json.dumps(loaded.json())}")
        body = {
            "model": path.name, "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0,
            "ignore_eos": True, "stream": True,
        }  # fmt: skip
        for _ in range(2):  # the first request warms up; the second is measured
            with requests.post(f"{url}/v1/completions", json=body, stream=True) as r:
                r.raise_for_status()
                lines = (
                    line
                    for line in r.iter_lines()
                    if line.startswith(b"data: {") and b'"text"' in line
                )
                result = stream_rate(lines)
        return result
    finally:
        proc.terminate()
        proc.wait(30)
        config.unlink(missing_ok=True)


def bench_prefill(path: Path, threads: int) -> dict[str, float]:
    """Seconds to prefill the prompt from scratch (no prefix cache), in this process, with the
    quantized default and with the exact fp32 path: the default must be no slower."""
    import torch

    from cortex.config import EngineConfig
    from cortex.neuron.engine.sampling import SamplingParams
    from cortex.neuron.offline import LLM
    from cortex.neuron.text import load_tokenizer

    torch.set_num_threads(threads)
    ids = load_tokenizer(path).encode(PROMPT)
    one = SamplingParams(max_tokens=1, temperature=0)
    seconds = {}
    for label, dtype in (("quantized default", None), ("float32", "float32")):
        llm = LLM(path, dtype=dtype, max_context=2048, config=EngineConfig(prefix_cache=False))
        llm.generate([ids], one)  # warm-up
        start = time.perf_counter()
        for _ in range(3):
            llm.generate([ids], one)
        seconds[label] = (time.perf_counter() - start) / 3
    return seconds


def bench_llama(path: Path, threads: int) -> tuple[float, float, int]:
    """llama.cpp in this process (call through `--llama-only` in the interpreter that has it)."""
    from llama_cpp import Llama

    llm = Llama(str(path), n_threads=threads, n_ctx=1024, verbose=False)
    for _ in range(2):
        chunks = llm.create_completion(PROMPT, max_tokens=TOKENS, temperature=0, stream=True)
        result = stream_rate(chunks)
    return result


def bench_transformers(path: Path, threads: int) -> tuple[float, float, int]:
    """transformers in bf16 with a static cache; the rate from a 1-token and a full run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.bfloat16
    ).eval()
    ids = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)(
        PROMPT, return_tensors="pt"
    )["input_ids"]

    def generate(n: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(
                ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=2,
                cache_implementation="static",
            )  # fmt: skip
        return time.perf_counter() - start

    generate(2)
    first, full = generate(1), generate(TOKENS)
    return first, (TOKENS - 1) / (full - first), ids.shape[1]


def llama_row(path: Path, threads: int, python: str | None) -> tuple[float, float, int] | str:
    """llama.cpp's figures, or why there are none."""
    python = python or sys.executable
    cmd = [python, __file__, "--llama-only", "--model", str(path), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return f"skipped: no llama_cpp in {python} ({done.stderr.strip().splitlines()[-1:]})"
    return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a .gguf file (default: SmolLM2 Q4_1)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--llama-python", help="a Python that can import llama_cpp")
    parser.add_argument("--llama-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    path = args.model
    if path is None:
        sys.path.insert(0, str(ROOT))
        from tests.support.smollm2 import smollm2_gguf

        path = smollm2_gguf()
    if args.llama_only:
        print(json.dumps(bench_llama(path, args.threads)))
        return
    print(f"model: {path} ({path.stat().st_size / 2**20:.0f} MiB), threads: {args.threads}")
    print(f"load average before: {os.getloadavg()}")
    rows = {
        "cortex (HTTP)": bench_cortex(path, args.threads),
        "cortex, torch ops": bench_cortex(path, args.threads, {"CORTEX_CPU_KERNELS": "off"}),
        "llama.cpp": llama_row(path, args.threads, args.llama_python),
        "transformers bf16": bench_transformers(path, args.threads),
    }
    prefill = bench_prefill(path, args.threads)
    print(f"{'':20}{'prefill s':>10}{'decode tok/s':>14}   (prefill: a cached prefix, 2nd request)")
    for name, row in rows.items():
        if isinstance(row, str):
            print(f"{name:20}{row}")
        else:
            print(f"{name:20}{row[0]:>10.3f}{row[1]:>14.1f}")
    ours, *others = rows.items()
    ratios = [f"{ours[1][1] / row[1]:.2f}x {name}" for name, row in others if type(row) is tuple]
    print(f"cortex's decode rate: {', '.join(ratios)}")
    shown = ", ".join(f"{label} {sec:.3f} s" for label, sec in prefill.items())
    print(f"cortex prefill of the prompt from scratch (in process): {shown}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
