"""GGUF tests run torch on one CPU thread.

The test machines are small and shared; with two threads every one of the thousands of small
ops in dequantization and decoding waits for a second core that another process holds, which
made these tests several times slower. The setting is restored after each module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
