"""Fixtures of the text tests: tokenizers are loaded once per session (the big ones take ~1 s)."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import pytest

from cortex.neuron.text.tokenizer import Tokenizer
from tests.conftest import FIXTURES


@lru_cache
def _load(name: str) -> Tokenizer:
    return Tokenizer.from_dir(FIXTURES / name)


@pytest.fixture(scope="session")
def load_tokenizer() -> Callable[[str], Tokenizer]:
    """`load_tokenizer("qwen3")`: the fixture model's Tokenizer, shared across tests."""
    return _load
