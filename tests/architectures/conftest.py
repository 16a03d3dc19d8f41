"""Architecture tests run torch on one CPU thread (see tests/support/torch_threads.py)."""

from tests.support.torch_threads import one_torch_thread

__all__ = ["one_torch_thread"]  # an autouse fixture: imported here to apply to this area
