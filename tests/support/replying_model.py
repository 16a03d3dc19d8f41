"""A tiny Qwen3 model that answers a fixed short reply and then ends its turn, and the stack the
API end-to-end tests run it in (`replying_stack`: a real neuron behind a real gateway).

A scripted checkpoint (tests/support/scripted.py): greedy decoding walks one fixed chain from
the prompt's last token, whatever the prompt:

- thinking on: the template ends `<|im_start|>assistant\\n`, so `\\n` -> `<think>` REASONING
  `</think>` `\\n\\n` REPLY `<|im_end|>`;
- thinking off: the template ends `...</think>\\n\\n`, so `\\n\\n` -> REPLY `<|im_end|>` (the
  same chain, entered half-way).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from tests.support.gateway_proc import GatewayProc, start_gateway
from tests.support.neuron_proc import NeuronProc, start_neuron
from tests.support.scripted import make_scripted_checkpoint

REPLY = "Hello from the tiny model."
REASONING = "Pondering"
MODEL = "tiny-qwen3"
CONTEXT = 40960
LOAD_TIMEOUT_S = 180


def make_replying_model(path: Path, *, max_position_embeddings: int = 40960) -> Path:
    """Write the tiny Qwen3 model (real Qwen3 tokenizer and template) to `path`."""
    return make_scripted_checkpoint(
        path,
        {"\n": f"<think>{REASONING}</think>\n\n{REPLY}"},
        max_position_embeddings=max_position_embeddings,
        # Small attention: Claude Code's ~18k-token prompt must prefill quickly on a CPU.
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )


@contextlib.contextmanager
def replying_stack(models: Path, gateway_section: str) -> Iterator[tuple[NeuronProc, GatewayProc]]:
    """`cortex neuron` with the replying model (`MODEL`) preloaded, so that no test pays the
    load, behind `cortex serve` whose `[gateway]` table holds `gateway_section`."""
    make_replying_model(models / MODEL, max_position_embeddings=CONTEXT)
    with start_neuron(models, ["--preload", MODEL]) as neuron:
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while (
            requests.get(neuron.url + "/models", timeout=30).json()["data"][0]["state"] != "loaded"
        ):
            assert time.monotonic() < deadline, neuron.log()[-3000:]
            time.sleep(0.2)
        config = (
            f'[gateway]\n{gateway_section}\n[[neurons]]\nname = "n1"\nendpoint = "{neuron.url}"\n'
        )
        gateway = start_gateway(config)
        try:
            yield neuron, gateway
        finally:
            gateway.stop()
