"""The merged catalogue behind the gateway's `GET /v1/models` (README: "Using the API").

Every model loaded on, or loadable by, an up neuron, every models.toml entry and every alias,
as OpenAI model objects plus a `cortex` object:
`{"state": "loaded"|"available", "locations": [{"neuron", "state"}], "pinned"}`; an alias also
carries `"alias_of"`, and known facts (`max_context`, `arch`, `bytes`) are added when a neuron
reported them. Models on a down neuron are left out unless models.toml names them.
`locations` lists the up neurons that have the model, with its state there (`loaded`, `loading`,
`available`). Sorted by id.
"""

from __future__ import annotations

import difflib
from typing import Any

from cortex.config import ModelsConfig
from cortex.errors import quoted
from cortex.gateway.fleet import Fleet
from cortex.gateway.pins import Pins

CREATED = 1_700_000_000  # a fixed `created`: the catalogue is not a history


def known_names(fleet: Fleet, models: ModelsConfig) -> set[str]:
    """Every model name a client may use: what neurons have, models.toml entries, aliases."""
    names = {m for n in fleet for m in n.models}
    names |= {m.id for m in models.models} | set(models.aliases)
    return names


def suggest(name: str, fleet: Fleet, models: ModelsConfig) -> str:
    """`"; did you mean 'X'?"` for the known model names closest to a misspelt `name` (case
    ignored), else ""."""
    names = sorted(known_names(fleet, models))
    lowered = {n.lower(): n for n in names}
    close = difflib.get_close_matches(name[:200].lower(), list(lowered), n=3, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(quoted(lowered[c]) for c in close) + "?"


def locations(fleet: Fleet, model_id: str) -> list[dict[str, str]]:
    """Where a model is, on up neurons, with its state there."""
    return [
        {"neuron": n.name, "state": n.models[model_id].state}
        for n in fleet.up()
        if model_id in n.models
    ]


def model_object(fleet: Fleet, pins: Pins, model_id: str, alias_of: str | None = None) -> dict:
    """One catalogue entry for `model_id` (or for an alias of it)."""
    target = alias_of or model_id
    where = locations(fleet, target)
    cortex: dict[str, Any] = {
        "state": "loaded" if any(w["state"] == "loaded" for w in where) else "available",
        "locations": where,
        "pinned": pins.is_pinned(target),
    }
    if alias_of:
        cortex["alias_of"] = alias_of
    for neuron in fleet.up():
        place = neuron.models.get(target)
        if place is not None:
            facts = {"max_context": place.max_context, "arch": place.arch, "bytes": place.bytes}
            cortex.update({k: v for k, v in facts.items() if v and k not in cortex})
    return {
        "id": model_id,
        "object": "model",
        "created": CREATED,
        "owned_by": "cortex",
        "cortex": cortex,
    }


def catalogue(fleet: Fleet, models: ModelsConfig, pins: Pins) -> dict[str, Any]:
    """The OpenAI list object for `/v1/models`."""
    ids: set[str] = {m.id for m in models.models}
    ids.update(model for model, _ in pins.items())
    for neuron in fleet.up():
        ids.update(neuron.models)
    data = [model_object(fleet, pins, model_id) for model_id in ids]
    data += [
        model_object(fleet, pins, alias, alias_of=target)
        for alias, target in models.aliases.items()
        if alias not in ids
    ]
    data.sort(key=lambda m: m["id"])
    return {"object": "list", "data": data}
