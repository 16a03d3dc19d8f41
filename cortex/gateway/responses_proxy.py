"""The OpenAI Responses API on the gateway (what Codex CLI speaks): `POST /v1/responses`,
`GET`/`DELETE /v1/responses/{id}`, `GET /v1/responses/{id}/input_items`.

A request is translated to the neuron's OpenAI chat (`cortex.api.responses`), routed and
cold-loaded by `ProxiedRequest` like any other, and its answer translated back: a whole Response
object (`cortex.api.response_object`) or a live event stream (`cortex.api.response_events`,
relayed by `chat_relay.relay_stream`). Errors use OpenAI's envelope: a prompt over the context
is 400 `context_length_exceeded` (param `input`; how Codex recognises an overflow), no neuron
free 503 with Retry-After; once a stream started, a failure is a `response.failed` event.

Decisions:
- `max_output_tokens` is clamped to the model's context length as the fleet reports it (the
  neuron then clamps it exactly to the room the prompt leaves), like `max_tokens` elsewhere.
- Tools and input items left out of the translation are named in the `x-cortex-ignored`
  response header (printable ASCII, truncated), never refused.
- `store` (default true, as OpenAI's) keeps the finished response in the gateway's response
  store (response_store.py) before its last event goes out, so a client can continue it at
  once; failed and cut-off answers are not stored. With `store: false` nothing is written.
- `previous_response_id` continues a stored conversation: its input and output items come
  first. An id that is unknown, another key's, expired, or whose conversation lost an earlier
  response is 400 `previous_response_not_found` (param `previous_response_id`), as OpenAI.
- `GET /v1/responses/{id}` returns the stored Response as JSON (no replay as a stream);
  `input_items` lists the items that request itself sent (not the earlier turns'), newest
  first by default, with `order`, `limit` (1-100, default 20) and `after`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cortex.api import response_events, response_object, responses
from cortex.api.response_events import ResponseStream
from cortex.errors import InvalidRequest, NotFound
from cortex.gateway.chat_relay import Dialect, open_chat, read_completion, relay_stream
from cortex.gateway.exchange import ProxiedRequest
from cortex.gateway.response_store import Stored, owner_of
from cortex.gateway.router import OnWait
from cortex.gateway.state import GATEWAY
from cortex.web import json_response, presented_key, read_object

IGNORED_HEADER = "x-cortex-ignored"
_HEADER_MAX = 1000
DIALECT = Dialect(response_events.encode, response_events.has_token)


async def create(request: web.Request) -> web.StreamResponse:
    """`POST /v1/responses`: one turn, a Response object or a stream of events."""
    body = await read_object(request)
    responses.check_request(body)
    store = request.app[GATEWAY].responses
    owner = owner_of(presented_key(request))
    earlier = await _conversation(request, owner, body.get("previous_response_id"))
    translated = responses.to_openai_chat(body, earlier)
    chat = translated.chat
    px = ProxiedRequest(request, chat["model"])
    limit = px.max_context()
    if limit and "max_tokens" in chat:
        chat["max_tokens"] = min(chat["max_tokens"], limit)
    headers = {IGNORED_HEADER: _header_value(translated.ignored)} if translated.ignored else {}
    response = response_object.skeleton(body, body["model"])

    async def keep(final: dict[str, Any]) -> None:
        if final["store"]:
            await store.put(owner, final, translated.input_items)

    if body.get("stream") is True:
        stream = ResponseStream(response)
        return await relay_stream(
            request,
            px,
            chat,
            stream,
            DIALECT,
            opener=_open,
            headers=headers,
            before_end=lambda: keep(stream.response),
        )
    await _open(px, chat, False)
    final = response_object.from_chat_completion(response, await read_completion(px))
    await keep(final)
    return json_response(final, headers={**px.headers(), **headers})


async def retrieve(request: web.Request) -> web.Response:
    """`GET /v1/responses/{id}`: a stored Response of this key."""
    return json_response((await _stored(request)).response)


async def delete(request: web.Request) -> web.Response:
    """`DELETE /v1/responses/{id}`: forget a stored Response of this key."""
    response_id = request.match_info["response_id"]
    owner = owner_of(presented_key(request))
    if not await request.app[GATEWAY].responses.delete(owner, response_id):
        raise _not_found(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


async def input_items(request: web.Request) -> web.Response:
    """`GET /v1/responses/{id}/input_items`: the input items of a stored Response, as a list."""
    items = list((await _stored(request)).input)
    query = request.query
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order: must be asc or desc", param="order")
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise InvalidRequest("limit: must be an integer from 1 to 100", param="limit")
    if order == "desc":
        items.reverse()
    after = query.get("after")
    if after:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise InvalidRequest("after: no such item in this response", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None,
            "has_more": len(items) > limit,
        }
    )


async def _open(
    px: ProxiedRequest, chat: dict[str, Any], stream: bool, on_wait: OnWait | None = None
) -> None:
    """`open_chat`; an overflowing prompt names the Responses field that holds it."""
    try:
        await open_chat(px, chat, stream, on_wait)
    except InvalidRequest as exc:
        if exc.code == "context_length_exceeded":
            exc.param = "input"
        raise


async def _conversation(request: web.Request, owner: str, previous: str | None) -> list[dict]:
    """The items of the stored conversation `previous` continues (none without one)."""
    if previous is None:
        return []
    chain = await request.app[GATEWAY].responses.conversation(owner, previous)
    if not chain or chain[0].previous_id is not None:
        error = InvalidRequest(
            f"Previous response with id '{_short(previous)}' not found.",
            param="previous_response_id",
        )
        error.code = "previous_response_not_found"
        raise error
    return responses.history([(s.input, s.response.get("output") or []) for s in chain])


async def _stored(request: web.Request) -> Stored:
    response_id = request.match_info["response_id"]
    owner = owner_of(presented_key(request))
    stored = await request.app[GATEWAY].responses.get(owner, response_id)
    if stored is None:
        raise _not_found(response_id)
    return stored


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{_short(response_id)}' not found.", param="response_id")


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _header_value(ignored: list[str]) -> str:
    """What was left out, as one header value: printable ASCII, truncated."""
    text = "".join(c if " " <= c <= "~" else "?" for c in ", ".join(ignored))
    return _short(text, _HEADER_MAX)
