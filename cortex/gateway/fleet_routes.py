"""The gateway's own routes: `/health`, `HEAD /`, `/v1/models`, `/fleet` and its actions.

`POST /fleet/load {"model", "neuron"?}` waits for the load (up to `cold_load_timeout`) and
answers `{"model", "neuron", "state": "loaded"}`. `POST /fleet/unload {"model", "neuron"?}`
unloads it from that neuron, or from every neuron holding it, and answers `{"model", "neuron",
"neurons", "state": "unloaded"}`; a pinned model must be unpinned first (409 `conflict`, which
`cortex unload` reports with exit code 1, not as a usage error). `POST /fleet/pin
{"model", "neuron"?, "pinned"}`: `true` loads now and pins once loaded (a model no neuron has
and models.toml does not name is 404 and never pinned; a failed load leaves no pin), `false`
unpins.
Model names may be aliases. `last_seen` in `/fleet` is a Unix time (seconds).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cortex.errors import Conflict, InvalidRequest, ModelNotFound, NotFound, quoted
from cortex.gateway.catalogue import catalogue, locations, suggest
from cortex.gateway.state import GATEWAY, MODEL, NEURON, Gateway
from cortex.web import json_response, read_object


async def root(_: web.Request) -> web.Response:
    """`GET /` and `HEAD /`: a liveness answer, open without a key."""
    return web.Response(text="cortex gateway\n")


async def health(request: web.Request) -> web.Response:
    """`GET /health`: ok when every neuron is up, degraded otherwise."""
    fleet = request.app[GATEWAY].fleet
    total = len(fleet.neurons)
    up = len(fleet.up())
    return json_response(
        {"status": "ok" if up == total else "degraded", "neurons": {"up": up, "total": total}}
    )


async def models(request: web.Request) -> web.Response:
    """`GET /v1/models`: the merged catalogue."""
    gw = request.app[GATEWAY]
    return json_response(catalogue(gw.fleet, gw.models, gw.pins))


async def fleet(request: web.Request) -> web.Response:
    """`GET /fleet`: neurons and models."""
    gw = request.app[GATEWAY]
    ids = sorted({m for n in gw.fleet for m, p in n.models.items() if p.state != "available"})
    ids += [m for m, _ in gw.pins.items() if m not in ids]
    return json_response(
        {
            "neurons": [n.to_json() for n in gw.fleet],
            "models": [
                {
                    "id": m,
                    "pinned": gw.pins.is_pinned(m),
                    "locations": locations(gw.fleet, m),
                    **({"pin_error": gw.pins.problems[m]} if m in gw.pins.problems else {}),
                }
                for m in ids
            ],
        }
    )


async def _target(request: web.Request) -> tuple[Gateway, dict[str, Any], str, str | None]:
    gw = request.app[GATEWAY]
    body = await read_object(request)
    model = body.get("model")
    neuron = body.get("neuron")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required", param="model")
    if neuron is not None and not isinstance(neuron, str):
        raise InvalidRequest("'neuron' must be a string", param="neuron")
    if neuron and gw.fleet.get(neuron) is None:
        raise NotFound(f"no neuron named {quoted(neuron)}")
    model = gw.models.resolve(model)
    request[MODEL] = model
    if neuron:
        request[NEURON] = neuron
    return gw, body, model, neuron or None


async def _ensure_loaded(gw: Gateway, model: str, neuron: str | None) -> str:
    for n, _ in gw.fleet.loaded_places(model):
        if neuron is None or n.name == neuron:
            return n.name
    task = gw.router.load(model, neuron)
    loaded_on, _ = await gw.router.wait(task, model, None)
    return loaded_on.name


async def load(request: web.Request) -> web.Response:
    """`POST /fleet/load`."""
    gw, _, model, neuron = await _target(request)
    name = await _ensure_loaded(gw, model, neuron)
    return json_response({"model": model, "neuron": name, "state": "loaded"})


async def unload(request: web.Request) -> web.Response:
    """`POST /fleet/unload`."""
    gw, _, model, neuron = await _target(request)
    if gw.pins.is_pinned(model, neuron):
        raise Conflict(f"model {quoted(model)} is pinned: unpin it first", param="model")
    targets = [
        (n, n.models[model])
        for n in gw.fleet
        if (neuron is None or n.name == neuron)
        and model in n.models
        and n.models[model].state != "available"
    ]
    if not targets:
        where = f" on {neuron}" if neuron else ""
        raise ModelNotFound(f"model {quoted(model)} is not loaded{where}", param="model")
    for n, place in targets:
        await gw.router.unload(n, place)
    names = [n.name for n, _ in targets]
    return json_response(
        {"model": model, "neuron": names[0], "neurons": names, "state": "unloaded"}
    )


async def pin(request: web.Request) -> web.Response:
    """`POST /fleet/pin`."""
    gw, body, model, neuron = await _target(request)
    pinned = body.get("pinned", True)
    if not isinstance(pinned, bool):
        raise InvalidRequest("'pinned' must be true or false", param="pinned")
    if not pinned:
        gw.pins.unpin(model, neuron)
        return json_response({"model": model, "neuron": neuron, "pinned": False})
    # Only a model that resolves is pinned, and only once it loaded: a pin for a name nobody
    # has would show in every client's /v1/models and be retried for ever.
    if gw.models.entry(model) is None and not gw.fleet.known(model):
        raise ModelNotFound(
            f"model {quoted(model)} not found on any neuron{suggest(model, gw.fleet, gw.models)}",
            param="model",
        )
    name = await _ensure_loaded(gw, model, neuron)
    gw.pins.pin(model, neuron)
    return json_response({"model": model, "neuron": name, "pinned": True, "state": "loaded"})
