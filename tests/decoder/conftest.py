"""Decoder tests run torch single-threaded: the tiny models gain nothing from more threads, and
on a shared, busy machine OpenMP spin-waiting across threads makes them many times slower."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
