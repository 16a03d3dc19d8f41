"""Architecture tests run torch single-threaded, like the decoder tests (see there why)."""

from tests.decoder.conftest import single_thread  # noqa: F401
