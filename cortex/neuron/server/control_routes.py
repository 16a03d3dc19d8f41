"""The neuron's control routes (README: "Talking to a neuron directly"): /health, /models,
/models/load, /models/unload, /models/{id}/endpoint, /tokenize, /metrics, /memory/release.

`/models/{id}/endpoint` answers this neuron's own base URL: every loaded model is served by the
same `/v1/...` routes here (the gateway replaces a loopback host with the neuron's address).

`/health` reads each device's memory from the snapshot its worker thread keeps (this thread never
asks a driver), and adds `graphs` to each model: how its decode runs ("captured", "eager", or
"failed: <why>" after a failed CUDA-graph capture; a loading model has "eager").
`/models/load` also takes `memory`, the bytes the model may take in all (weights and KV cache),
as a number or a size string such as "18GiB" (the gateway sends models.toml's `memory`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from cortex import __version__
from cortex.api import openai
from cortex.config import QUANTIZE_VALUES, parse_size
from cortex.errors import InvalidRequest
from cortex.neuron import registry
from cortex.neuron.engine.worker import LoadOptions
from cortex.neuron.metrics import CONTENT_TYPE
from cortex.neuron.server.state import STATE, NeuronState
from cortex.neuron.text.prompts import build_prompt
from cortex.web import json_response, read_object


async def health(request: web.Request) -> web.Response:
    """`GET /health`: status, devices and loaded models (never needs a token)."""
    state = request.app[STATE]
    device_list = [state.manager.workers[d].memory().to_dict() for d in state.devices]
    models = []
    for model in list(state.manager.models.values()):
        stats = model.stats()
        models.append(
            {
                "id": model.id,
                "state": "loaded",
                "device": model.device,
                "bytes": model.info.bytes,
                "in_flight": stats.running,
                "waiting": stats.waiting,
                "graphs": stats.graphs,
            }
        )
    for model_id, device in state.manager.loading.items():
        models.append(
            {
                "id": model_id,
                "state": "loading",
                "device": device,
                "bytes": 0,
                "in_flight": 0,
                "waiting": 0,
                "graphs": "eager",
            }
        )
    return json_response(
        {
            "status": "draining" if state.draining else "ok",
            "node": state.node,
            "version": __version__,
            "uptime_s": round(state.uptime, 3),
            "devices": device_list,
            "models": models,
        }
    )


def _catalogue(state: NeuronState) -> list[dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    for location in state.registry.scan():
        entries[location.id] = {
            "id": location.id,
            "state": "available",
            **registry.describe(location),
            "device": None,
            "format": location.format,
        }
    for model_id, device in state.manager.loading.items():
        entries.setdefault(
            model_id,
            {
                "id": model_id,
                "arch": None,
                "params": None,
                "bytes": None,
                "max_context": None,
                "format": None,
            },
        )
        entries[model_id].update(state="loading", device=device)
    for model in list(state.manager.models.values()):
        entry = entries.setdefault(model.id, {"id": model.id, **registry.describe(model.location)})
        entry.update(
            state="loaded",
            arch=model.arch,
            bytes=model.info.bytes,
            max_context=model.max_context,
            device=model.device,
            format=model.location.format,
        )
    return list(entries.values())


async def list_models(request: web.Request) -> web.Response:
    """`GET /models`: loaded models and every model found on disk."""
    state = request.app[STATE]
    data = await asyncio.to_thread(_catalogue, state)
    return json_response({"object": "list", "data": data})


async def load(request: web.Request) -> web.Response:
    """`POST /models/load`: load (or join the load of) a model; 200 when already loaded."""
    state = request.app[STATE]
    body = await read_object(request)
    model_id = body.get("model")
    registry.check_id(model_id)
    device = body.get("device")
    dtype = body.get("dtype")
    max_context = body.get("max_context")
    if device is not None and not isinstance(device, str):
        raise InvalidRequest("'device' must be a string such as 'cuda:0' or 'cpu'", param="device")
    if dtype is not None and (not isinstance(dtype, str) or dtype.lower() not in _DTYPES):
        raise InvalidRequest(f"'dtype' must be one of {sorted(_DTYPES)}", param="dtype")
    if max_context is not None and (
        isinstance(max_context, bool) or not isinstance(max_context, int) or max_context < 1
    ):
        raise InvalidRequest("'max_context' must be a positive integer", param="max_context")
    quantize = body.get("quantize")
    if quantize is not None and quantize not in QUANTIZE_VALUES:
        raise InvalidRequest(f"'quantize' must be one of {list(QUANTIZE_VALUES)}", param="quantize")
    if dtype is not None and dtype.lower() == "auto":
        dtype = None
    options = LoadOptions(dtype, max_context, quantize, _memory(body.get("memory")))
    model, _ = await state.manager.load(model_id, device, options)
    return json_response(
        {
            "model": model.id,
            "state": "loaded",
            "device": model.device,
            "bytes": model.info.bytes,
            "load_seconds": round(model.info.load_seconds, 3),
            "max_context": model.max_context,
            "dtype": model.info.dtype,
        }
    )


_DTYPES = {"auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"}


def _memory(value: Any) -> int | None:
    """The load's `memory` in bytes (None when absent); 400 unless a positive size."""
    if value is None:
        return None
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise InvalidRequest(f"'memory': {exc}", param="memory") from None
    if size < 1:
        raise InvalidRequest("'memory' must be a positive size", param="memory")
    return int(size)


async def unload(request: web.Request) -> web.Response:
    """`POST /models/unload`: cancel the model's requests and free it; 404 if not loaded."""
    state = request.app[STATE]
    body = await read_object(request)
    model_id = body.get("model")
    registry.check_id(model_id)
    await state.manager.unload(model_id)
    return json_response({"model": model_id, "state": "unloaded"})


async def release_memory(request: web.Request) -> web.Response:
    """`POST /memory/release`: return cached allocator memory to the devices (used by the
    gateway's defrag, see cortex/gateway/neuron_client.py); `{"released_bytes": N}`."""
    released = await request.app[STATE].manager.release_memory()
    return json_response({"released_bytes": released})


async def endpoint(request: web.Request) -> web.Response:
    """`GET /models/{id}/endpoint`: the base URL serving `/v1/...` for that model."""
    state = request.app[STATE]
    model_id = request.match_info["id"]
    if model_id not in state.manager.models:
        state.registry.resolve(model_id)  # 400 for a bad id, 404 when it is nowhere
    return json_response({"url": state.public_url, "model": model_id})


async def tokenize(request: web.Request) -> web.Response:
    """`POST /tokenize`: exact prompt token count after the chat template."""
    state = request.app[STATE]
    body = await read_object(request)
    if body.get("messages") is not None:
        req = openai.parse_chat(body)
    elif body.get("prompt") is not None:
        req = openai.parse_completion(body)
    else:
        raise InvalidRequest("give 'messages' or 'prompt'", param="messages")
    model = state.manager.get(req.model)
    ids = await asyncio.to_thread(build_prompt, model.tokenizer, req)
    answer: dict[str, Any] = {"count": len(ids), "max_context": model.max_context}
    if body.get("return_tokens", True):
        answer["tokens"] = ids
    return json_response(answer)


async def metrics(request: web.Request) -> web.Response:
    """`GET /metrics`: Prometheus text."""
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
