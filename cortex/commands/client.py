"""A small JSON-over-HTTP client for the CLI, on the standard library.

The client commands use `urllib` rather than aiohttp: they make a handful of sequential calls,
and importing aiohttp (and its C speedups) would cost more start-up time than the whole command
is allowed (`bench/cli_startup.py`). Errors come back as `cortex.errors` classes: a server that
cannot be reached is `Unreachable` (exit 3, naming the URL tried); an error envelope from the
server becomes the class with the same `code`, so its CLI exit code follows the one table.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from cortex import errors
from cortex.errors import CortexError, Unreachable

DEFAULT_GATEWAY = "http://127.0.0.1:31313"

# Without a code in the answer, the HTTP status picks the error class.
_BY_STATUS: dict[int, type[CortexError]] = {
    400: errors.InvalidRequest,
    401: errors.Unauthorized,
    403: errors.Unauthorized,
    404: errors.NotFound,
    413: errors.PayloadTooLarge,
    422: errors.UnsupportedArchitecture,
    429: errors.RateLimited,
    502: errors.UpstreamError,
    503: errors.Unavailable,
    507: errors.InsufficientMemory,
    529: errors.Unavailable,
}


def gateway_url(explicit: str | None) -> str:
    """`--gateway`, else `$CORTEX_GATEWAY`, else the default local gateway."""
    return (explicit or os.environ.get("CORTEX_GATEWAY") or DEFAULT_GATEWAY).rstrip("/")


@dataclass
class Response:
    """A decoded answer: its status and JSON body (None when the body is not JSON)."""

    status: int
    data: Any


class Client:
    """JSON calls to one server (a gateway or a neuron), authenticated by `$CORTEX_API_KEY`."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("CORTEX_API_KEY")
        self.timeout = timeout

    def get(self, path: str, timeout: float | None = None) -> Any:
        """GET `path`; the JSON body of a 2xx answer, else the matching `CortexError`."""
        return self.call("GET", path, None, timeout)

    def post(self, path: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        """POST a JSON body to `path`; the JSON body of a 2xx answer, else a `CortexError`."""
        return self.call("POST", path, body, timeout)

    def call(self, method: str, path: str, body: Any, timeout: float | None) -> Any:
        """Make one call and raise the server's error, if any, as a `CortexError`."""
        response = self.request(method, path, body, timeout)
        if response.status >= 400:
            raise remote_error(response.status, response.data, self.base_url + path)
        return response.data

    def request(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> Response:
        """Make one call; any HTTP status comes back, only transport failures raise."""
        url = self.base_url + path
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        limit = self.timeout if timeout is None else timeout
        try:
            with urllib.request.urlopen(req, timeout=limit) as answer:
                return Response(answer.status, _decode(answer.read()))
        except urllib.error.HTTPError as exc:
            with exc:
                return Response(exc.code, _decode(exc.read()))
        except TimeoutError:
            raise Unreachable(f"no answer from {url} within {limit:g}s", url=url) from None
        except urllib.error.URLError as exc:
            raise Unreachable(f"could not reach {url}: {_reason(exc.reason)}", url=url) from None
        except (ConnectionError, OSError) as exc:
            raise Unreachable(f"could not reach {url}: {_reason(exc)}", url=url) from None


def remote_error(status: int, data: Any, url: str) -> CortexError:
    """The `CortexError` for an error answer, from its envelope's `code` or its status."""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or f"HTTP {status}")
        code = error.get("code") or error.get("type")
    else:
        message, code = f"HTTP {status}", None
    cls = _class_for(code, status)
    # Built without the subclass's own constructor: the class carries status, code and exit
    # code; only the server's message is needed here.
    exc = cls.__new__(cls)
    CortexError.__init__(exc, f"{message} (HTTP {status} from {url})", url=url, status=status)
    return exc


def _class_for(code: Any, status: int) -> type[CortexError]:
    return errors.error_class(code) or _BY_STATUS.get(
        status, errors.UpstreamError if status >= 500 else CortexError
    )


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _reason(reason: Any) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    if isinstance(reason, TimeoutError):
        return "timed out"
    return getattr(reason, "strerror", None) or str(reason)
