"""The one interface through which the gateway talks to a neuron (README: "Talking to a neuron directly").

Every call the gateway makes to a node goes through `NeuronClient`: health, catalogue, load,
unload, endpoint lookup, tokenize, memory release and the proxied OpenAI request. A future
`kind = "openai"` upstream (vLLM, llama.cpp, Ollama...) is a subclass that answers `health` and
`models` from its `/v1/models` and has `manages_models = False`, so the router never loads or
evicts on it.

Memory release (used by defrag, see upkeep.py): `POST /memory/release` with an empty JSON
body asks the neuron to drop cached allocator memory (`torch.cuda.empty_cache()` on each device)
and answers `{"released_bytes": N}`. A neuron without that route answers 404/405 and the gateway
falls back to unload + load of each resident model (see upkeep.py).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from cortex import errors
from cortex.errors import CortexError, UpstreamError

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "0.0.0.0", "::1", "[::1]"})


def error_from_response(status: int, body: bytes, neuron: str) -> CortexError:
    """Turn a neuron's error answer (OpenAI envelope) into the matching `cortex.errors` class.

    Status, message, param and extra fields (`required_bytes`, ...) are kept as the neuron sent
    them, so the gateway's answer says what the neuron said. An unknown code keeps its code on
    `InvalidRequest` (4xx) or `UpstreamError` (5xx); an unparsable body is `UpstreamError`.
    """
    try:
        error = orjson.loads(body)["error"]
        message = str(error["message"])
        code = error.get("code")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        text = body[:200].decode("utf-8", errors="replace")
        exc: CortexError = UpstreamError(f"neuron {neuron} answered {status}: {text}")
        exc.status = status if status >= 500 else 502
        exc.neuron_status = status
        return exc
    fallback = errors.InvalidRequest if 400 <= status < 500 else UpstreamError
    cls = errors.error_class(code) or fallback
    extra = {k: v for k, v in error.items() if k not in ("message", "type", "code", "param")}
    # Bypass subclass constructors (ContextLengthExceeded takes numbers): keep the message as is.
    exc = cls.__new__(cls)
    CortexError.__init__(exc, message, param=error.get("param"), **extra)
    if isinstance(exc, errors.Unavailable):
        exc.retry_after = 5.0
    if isinstance(code, str):
        exc.code = code
    exc.status = status
    exc.neuron_status = status
    return exc


def rewrite_loopback(url: str, neuron_endpoint: str) -> str:
    """Replace a loopback host in `url` by the host of `neuron_endpoint`, keeping port and path.

    A neuron that listens on 0.0.0.0 reports `http://localhost:13131`; from the gateway's host
    that must become `http://beast.internal:13131`.
    """
    parsed = URL(url)
    if parsed.host not in LOOPBACK_HOSTS:
        return url
    host = URL(neuron_endpoint).host
    if host is None or host in LOOPBACK_HOSTS:
        return url
    return str(parsed.with_host(host))


class NeuronClient:
    """Calls to one `cortex neuron`; `session` is the gateway's shared connection pool."""

    kind = "cortex"
    manages_models = True

    def __init__(
        self,
        name: str,
        endpoint: str,
        session: aiohttp.ClientSession,
        *,
        token: str = "",
        control_timeout: float = 10.0,
        load_timeout: float = 900.0,
        health_timeout: float | None = None,
    ) -> None:
        self.name = name
        self.endpoint = endpoint.rstrip("/")
        self.session = session
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.proxy_headers = {"Content-Type": "application/json", **self.headers}
        self._control = aiohttp.ClientTimeout(total=control_timeout)
        self._load = aiohttp.ClientTimeout(total=load_timeout)
        # A healthy neuron answers /health from its event loop at once, however busy its
        # devices are: a short limit here is how a stalled neuron is noticed in seconds.
        self._health = aiohttp.ClientTimeout(total=health_timeout or control_timeout)

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> Any:
        data = orjson.dumps(body) if body is not None else None
        headers = self.proxy_headers if data else self.headers
        async with self.session.request(
            method,
            self.endpoint + path,
            data=data,
            headers=headers,
            timeout=timeout or self._control,
        ) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                raise error_from_response(resp.status, raw, self.name)
            return orjson.loads(raw) if raw else {}

    async def health(self) -> dict[str, Any]:
        """`GET /health`: status, devices with free memory, loaded models with in-flight counts."""
        return await self._call("GET", "/health", timeout=self._health)

    async def models(self) -> list[dict[str, Any]]:
        """`GET /models`: loaded models and every model found on disk."""
        return (await self._call("GET", "/models")).get("data", [])

    async def load(self, model: str, **options: Any) -> dict[str, Any]:
        """`POST /models/load`; `options` are `device`, `dtype`, `max_context`, `quantize` and
        `memory` (bytes: models.toml's budget, weights and KV cache), None dropped."""
        body = {"model": model, **{k: v for k, v in options.items() if v is not None}}
        return await self._call("POST", "/models/load", body, self._load)

    async def unload(self, model: str) -> dict[str, Any]:
        """`POST /models/unload`: in-flight requests on the neuron finish or are cancelled."""
        return await self._call("POST", "/models/unload", {"model": model}, self._load)

    async def model_endpoint(self, model: str) -> str:
        """Base URL serving `/v1/...` for `model`, loopback hosts rewritten; the neuron's own
        endpoint when it has no such route."""
        try:
            answer = await self._call("GET", f"/models/{quote(model, safe='/')}/endpoint")
        except CortexError as exc:
            if getattr(exc, "neuron_status", None) in (404, 405):
                return self.endpoint
            raise
        url = answer.get("url") if isinstance(answer, dict) else None
        return rewrite_loopback(url, self.endpoint).rstrip("/") if url else self.endpoint

    async def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        """`POST /tokenize`: the exact prompt token count after the chat template."""
        return await self._call("POST", "/tokenize", body)

    async def release_memory(self) -> bool:
        """`POST /memory/release`; False when the neuron has no such route (see module doc)."""
        try:
            await self._call("POST", "/memory/release", {}, self._load)
        except CortexError as exc:
            if getattr(exc, "neuron_status", None) in (404, 405):
                return False
            raise
        return True

    async def post(
        self, base_url: str, path: str, body: bytes, timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        """Send a proxied OpenAI request; the caller reads and releases the response."""
        return await self.session.post(
            base_url + path, data=body, headers=self.proxy_headers, timeout=timeout
        )
