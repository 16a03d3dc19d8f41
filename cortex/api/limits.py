"""The numeric bounds of every sampling field: the one place they are defined and checked.

HTTP requests (openai_request.py; the Anthropic route checks its own sampling fields with
`check_sampling` too, and the Responses API inherits these bounds through the same functions) and
the engine's `SamplingParams` both check with these functions, so a value the engine cannot hold
(a seed past 64 bits, `top_k: 1e308`, an infinite temperature) is a 400 naming the field, never
an overflow inside a batch step that would fail every request batched with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from cortex.errors import InvalidRequest

INT_MAX = 2**31 - 1  # counts and token ids: what an int32 tensor holds
# An int64: sequence i of a request is seeded `seed + i`, which then still fits what
# torch.Generator.manual_seed accepts (up to 2**64 - 1).
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
MAX_N = 16
MAX_CHOICES = 64  # a legacy completion's prompts times n: the sequences one request runs
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS_ENTRIES = 1024  # a sparse bias: beyond this, a mask belongs in a grammar
LOGIT_BIAS = 100.0  # OpenAI's range: a bias is in [-100, 100]

# `max_tokens` when neither the request nor the model's generation_config gives one (still
# clamped to the room the prompt leaves): a small model that loops must not fill a whole 8k
# context before answering, as it did with "the remaining context" as the default. Ollama
# and llama.cpp's server bound their defaults the same way.
DEFAULT_MAX_TOKENS = 2048


class Bound(NamedTuple):
    """An inclusive range (exclusive at the low end when `open_low`); `integer` fields only
    take whole numbers."""

    low: float
    high: float
    integer: bool = False
    open_low: bool = False


BOUNDS: dict[str, Bound] = {
    # 0 is OpenAI's minimum: with `echo` and `logprobs` it scores the prompt alone.
    "max_tokens": Bound(0, INT_MAX, integer=True),
    "min_tokens": Bound(0, INT_MAX, integer=True),
    "temperature": Bound(0.0, math.inf),
    "top_p": Bound(0.0, 1.0),  # 0 keeps only the most likely token: greedy
    "top_k": Bound(-1, INT_MAX, integer=True),
    "min_p": Bound(0.0, 1.0),
    "presence_penalty": Bound(-2.0, 2.0),
    "frequency_penalty": Bound(-2.0, 2.0),
    "repetition_penalty": Bound(0.0, math.inf, open_low=True),
    "seed": Bound(SEED_MIN, SEED_MAX, integer=True),
    "top_logprobs": Bound(0, MAX_TOP_LOGPROBS, integer=True),
    "n": Bound(1, MAX_N, integer=True),
}


def number(value: Any, key: str, integer: bool = False) -> int | float:
    """`value` as a finite number (an int when `integer`); 400 naming `key` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"'{key}' must be a number", param=key)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"'{key}' must be a finite number", param=key)
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise InvalidRequest(f"'{key}' must be an integer", param=key)
        return int(value)
    return float(value)


def bounded(value: Any, key: str) -> int | float:
    """`value` checked against `BOUNDS[key]`; 400 naming `key` when out of range."""
    bound = BOUNDS[key]
    result = number(value, key, bound.integer)
    too_low = result <= bound.low if bound.open_low else result < bound.low
    if too_low or result > bound.high:
        low = "(" if bound.open_low else "["
        high = "inf" if math.isinf(bound.high) else _show(bound.high)
        raise InvalidRequest(f"'{key}' must be in {low}{_show(bound.low)}, {high}]", param=key)
    return result


def check_sampling(values: Mapping[str, Any]) -> None:
    """Check every bounded field present (and not None) in `values`."""
    for key, value in values.items():
        if key in BOUNDS and value is not None:
            bounded(value, key)


def logit_bias(value: Any, key: str = "logit_bias") -> dict[int, float]:
    """OpenAI's `logit_bias` (token id, as a JSON object key, -> bias in [-100, 100]) as
    {id: bias}; 400 naming `key` for a bad id, a bad bias or too many entries."""
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{key}' must be an object of token id -> bias", param=key)
    if len(value) > MAX_LOGIT_BIAS_ENTRIES:
        raise InvalidRequest(f"'{key}' takes at most {MAX_LOGIT_BIAS_ENTRIES} entries", param=key)
    out: dict[int, float] = {}
    for token, bias in value.items():
        token_id = int(token) if isinstance(token, str) and token.isdigit() else token
        if not is_token(token_id):
            raise InvalidRequest(f"'{key}': {token!r} is not a token id", param=key)
        bias = number(bias, key)
        if not -LOGIT_BIAS <= bias <= LOGIT_BIAS:
            raise InvalidRequest(f"'{key}': a bias must be in [-100, 100]", param=key)
        out[token_id] = bias
    return out


def token_ids(value: Any, key: str) -> list[int]:
    """A list of token ids (each in [0, INT_MAX]); 400 naming `key` otherwise."""
    if not isinstance(value, list) or not all(is_token(t) for t in value):
        raise InvalidRequest(f"'{key}' must be a list of token ids", param=key)
    return [int(t) for t in value]


def is_token(value: Any) -> bool:
    """An int in [0, INT_MAX] (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT_MAX


def _show(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
