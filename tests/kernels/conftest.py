"""Without a GPU the kernels run under Triton's interpreter, on CPU tensors.

Set before any kernel is defined: `triton.jit` picks the interpreter when it decorates.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
