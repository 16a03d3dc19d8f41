"""Run torch on one CPU thread in test areas that import this fixture into their conftest.py.

The test machines are small and shared: the tiny models gain nothing from more threads, and
with two or more every one of the thousands of small ops in dequantization and decoding waits
(OpenMP spin-waiting) for a core that another process holds, which made these tests several
times slower. The previous setting is restored after each module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch.set_num_threads(1) for the module, then back to what it was."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
