"""The error table: each code names one class, so a client maps an answer back exactly."""

from __future__ import annotations

from cortex import errors


def test_every_code_maps_back_to_its_class() -> None:
    classes = list(errors._descendants(errors.CortexError))
    for cls in classes:
        assert errors.error_class(cls.code) is cls or issubclass(cls, errors.error_class(cls.code))
    # A server's generic 500 is no configuration error (that would be CLI exit code 2).
    assert errors.error_class("internal_error") is None
    assert errors.error_class("config_error") is errors.ConfigError
    assert errors.error_class("context_length_exceeded") is errors.ContextLengthExceeded
