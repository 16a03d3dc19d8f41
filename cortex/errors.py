"""One error table for the whole program.

Every failure that reaches a boundary (an HTTP answer, a CLI exit) is a `CortexError` subclass.
The class says everything the boundary needs: the HTTP status, the OpenAI-style `code`, the
Anthropic error `type`, and the CLI exit code. Servers render it with `openai_envelope` or
`anthropic_envelope`; the CLI exits with `exit_code`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

# How much of a client's string (a model id, a header) an error message or a log line shows.
SHOWN_CHARS = 200


def printable(value: object, limit: int = SHOWN_CHARS) -> str:
    """`value` as one printable line for logs and error messages: control characters and
    non-ASCII escaped (a client cannot forge a log line or hide text), at most `limit`
    characters of it, with the original length when cut."""
    text = value if isinstance(value, str) else str(value)
    shown = text[:limit].encode("unicode_escape").decode("ascii")
    if len(text) > limit:
        shown += f"...({len(text)} chars)"
    return shown


def quoted(value: object, limit: int = SHOWN_CHARS) -> str:
    """`printable(value)` in single quotes, for a name inside a message."""
    return f"'{printable(value, limit)}'"


# CLI exit codes (README: "The CLI").
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class CortexError(Exception):
    """Base of every error that crosses a boundary."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    openai_type: ClassVar[str] = "server_error"
    anthropic_type: ClassVar[str] = "api_error"
    exit_code: ClassVar[int] = EXIT_FAILED

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.extra = extra

    def openai_envelope(self) -> dict[str, Any]:
        """The OpenAI error body: `{"error": {"message", "type", "code", "param", ...extra}}`."""
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.openai_type,
            "code": self.code,
            "param": self.param,
        }
        error.update(self.extra)
        return {"error": error}

    def anthropic_envelope(self) -> dict[str, Any]:
        """The Anthropic error body: `{"type": "error", "error": {"type", "message"}}`."""
        return {"type": "error", "error": {"type": self.anthropic_type, "message": self.message}}

    def headers(self) -> dict[str, str]:
        """Extra response headers (`Retry-After` where the client should come back)."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class InvalidRequest(CortexError):
    status = 400
    code = "invalid_request"
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    exit_code = EXIT_USAGE


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, max_context: int) -> None:
        super().__init__(
            f"prompt is too long: {prompt_tokens} tokens > {max_context} maximum",
            param="messages",
        )


class Unauthorized(CortexError):
    status = 401
    code = "invalid_api_key"
    openai_type = "authentication_error"
    anthropic_type = "authentication_error"
    exit_code = EXIT_FAILED


class ModelNotFound(CortexError):
    status = 404
    code = "model_not_found"
    openai_type = "invalid_request_error"
    anthropic_type = "not_found_error"
    exit_code = EXIT_FAILED


class RequestTimeout(InvalidRequest):
    status = 408
    code = "request_timeout"


class Conflict(CortexError):
    """The request contradicts the current state (unloading a pinned model)."""

    status = 409
    code = "conflict"
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    exit_code = EXIT_FAILED


class NotFound(CortexError):
    status = 404
    code = "not_found"
    openai_type = "invalid_request_error"
    anthropic_type = "not_found_error"


class PayloadTooLarge(CortexError):
    status = 413
    code = "payload_too_large"
    openai_type = "invalid_request_error"
    anthropic_type = "request_too_large"


class UnsupportedArchitecture(CortexError):
    status = 422
    code = "unsupported_architecture"
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class UnsupportedQuantization(UnsupportedArchitecture):
    code = "unsupported_quantization"


class RateLimited(CortexError):
    status = 429
    code = "rate_limited"
    openai_type = "rate_limit_error"
    anthropic_type = "rate_limit_error"


class ModelLoadFailed(CortexError):
    status = 500
    code = "model_load_failed"


class EngineFailure(CortexError):
    """A model's forward step failed; its requests fail, the worker keeps serving."""

    status = 500
    code = "engine_error"


class UpstreamError(CortexError):
    """A neuron answered badly or broke off mid-answer."""

    status = 502
    code = "upstream_error"


class Unavailable(CortexError):
    """No capacity right now; the client should retry (OpenAI 503, Anthropic 529)."""

    status = 503
    code = "unavailable"
    openai_type = "server_error"
    anthropic_type = "overloaded_error"

    def __init__(self, message: str, *, retry_after: float = 5.0, **extra: Any) -> None:
        super().__init__(message, retry_after=retry_after, **extra)


class ShuttingDown(Unavailable):
    code = "shutting_down"


class InsufficientMemory(CortexError):
    status = 507
    code = "insufficient_memory"
    openai_type = "server_error"
    anthropic_type = "api_error"


class ConfigError(CortexError):
    """A configuration file is wrong; the message names the file, the key and the problem."""

    code = "config_error"
    exit_code = EXIT_USAGE


class Unreachable(CortexError):
    """The CLI could not reach a server."""

    status = 503
    code = "unreachable"
    exit_code = EXIT_UNREACHABLE


def error_class(code: object) -> type[CortexError] | None:
    """The first `CortexError` subclass (depth first, in definition order) with this `code`."""
    return next((cls for cls in _descendants(CortexError) if cls.code == code), None)


def _descendants(cls: type[CortexError]) -> Iterator[type[CortexError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _descendants(sub)


def anthropic_status(error: CortexError) -> int:
    """The HTTP status for an Anthropic route: overload is 529 there, not 503."""
    return 529 if isinstance(error, Unavailable) else error.status
