"""OpenAI routes of the neuron: /v1/models, /v1/chat/completions, /v1/completions.

A request names a model loaded here (404 `model_not_found` otherwise: loading is an explicit
lifecycle step, done by the gateway or `POST /models/load`). Streams are SSE: a role chunk per
choice, deltas as tokens come, a final chunk with `finish_reason` (and vLLM's `stop_reason`), the
usage chunk when `stream_options.include_usage` is set, then `data: [DONE]`. The stream's headers
carry the prompt's token count (`x-cortex-prompt-tokens`): OpenAI chunks have no place for it
before the final usage, and the gateway's Anthropic route reports it in `message_start`.
While nothing is generated (a long prefill, a full batch) an SSE comment goes out every half
second. An error after the stream started is sent as an `{"error": ...}` event before `[DONE]`
(the openai SDK raises it). A client that goes away cancels its sequences; every request logs
one line with its model, tokens, TTFT and tok/s.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from cortex.api import openai, sse
from cortex.api.openai import GenerationRequest
from cortex.errors import CortexError
from cortex.neuron.generation import Generation, Piece
from cortex.neuron.server.state import STATE
from cortex.neuron.text.grammar import compile_request
from cortex.neuron.text.prompts import build_prompts, check_prompt_size
from cortex.web import json_response, read_object, start_sse

log = logging.getLogger("cortex.neuron")
CLIENT_GONE = 499  # nginx's status for "client closed request", used in logs and metrics


async def list_models(request: web.Request) -> web.Response:
    """`GET /v1/models`: the models loaded on this neuron."""
    manager = request.app[STATE].manager
    data = [
        openai.model_card(m.id, m.created, max_model_len=m.max_context)
        for m in list(manager.models.values())
    ]
    return json_response({"object": "list", "data": data})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """`POST /v1/chat/completions`."""
    return await _generate(request, openai.parse_chat(await read_object(request)))


async def completions(request: web.Request) -> web.StreamResponse:
    """`POST /v1/completions` (legacy, `prompt`)."""
    return await _generate(request, openai.parse_completion(await read_object(request)))


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _generate(request: web.Request, req: GenerationRequest) -> web.StreamResponse:
    state = request.app[STATE]
    model = state.manager.get(req.model)
    check_prompt_size(model.tokenizer, req, model.max_context)
    prompts = await asyncio.to_thread(build_prompts, model.tokenizer, req)
    grammar = await compile_request(model.tokenizer, req, prompts[0])
    gen = Generation(model, req, prompts, state.metrics, grammar)
    rid, created = openai.new_id(req.kind), openai.now()
    status = 200
    state.in_flight.enter()
    try:
        gen.start()
        if req.stream:
            response, status = await _stream(request, gen, rid, created)
        else:
            response = await _collect(request, gen, rid, created)
        return response
    except CortexError as exc:
        status = exc.status
        raise
    except ConnectionResetError:
        status = CLIENT_GONE  # nobody is left to answer
        return web.Response(status=CLIENT_GONE)
    except asyncio.CancelledError:
        status = CLIENT_GONE
        raise
    finally:
        gen.cancel()
        state.in_flight.leave()
        state.metrics.requests.labels(model.id, str(status)).inc()
        _log(gen, status)


def _usage(gen: Generation) -> dict:
    return openai.usage(gen.prompt_tokens, gen.completion_tokens, gen.cached_tokens)


async def _collect(request: web.Request, gen: Generation, rid: str, created: int) -> web.Response:
    async for piece in gen.events():
        if piece is None and _client_gone(request):
            raise ConnectionResetError("client went away")
    choices = [s.result for s in gen.sequences]
    build = openai.chat_response if gen.req.kind == "chat" else openai.completion_response
    return json_response(build(rid, created, gen.req.model, choices, _usage(gen)))


async def _stream(
    request: web.Request, gen: Generation, rid: str, created: int
) -> tuple[web.StreamResponse, int]:
    prompt_tokens = {openai.PROMPT_TOKENS_HEADER: str(gen.prompt_tokens)}
    response = await start_sse(request, prompt_tokens)
    try:
        status = await _stream_events(request, gen, response, rid, created)
        await response.write(sse.DONE)
        await response.write_eof()
    except ConnectionResetError:
        status = CLIENT_GONE
    return response, status


async def _stream_events(
    request: web.Request, gen: Generation, response: web.StreamResponse, rid: str, created: int
) -> int:
    """Write the stream's chunks; returns the status to log. An error after the first byte
    becomes an `{"error": ...}` event (the HTTP status is already sent)."""
    req = gen.req
    offsets = [0] * len(gen.sequences)
    try:
        if req.kind == "chat":
            for i in range(len(gen.sequences)):
                delta = {"role": "assistant", "content": ""}
                await response.write(
                    _frame(req, openai.chat_chunk(rid, created, req.model, i, delta))
                )
        async for piece in gen.events():
            if piece is None:
                if _client_gone(request):
                    raise ConnectionResetError("client went away")
                await response.write(sse.comment())
                continue
            for chunk in _chunks(gen, piece, rid, created, offsets):
                await response.write(_frame(req, chunk))
        if req.include_usage:
            usage = openai.usage_chunk(req.kind, rid, created, req.model, _usage(gen))
            await response.write(sse.data(usage))
    except CortexError as exc:
        await response.write(sse.data(exc.openai_envelope()))
        return exc.status
    except ConnectionResetError:
        raise
    except Exception:
        log.exception("stream of %s failed", req.model)
        error = CortexError("internal error (see the neuron log)")
        await response.write(sse.data(error.openai_envelope()))
        return error.status
    return 200


def _frame(req: GenerationRequest, chunk: dict) -> bytes:
    """One chunk as an SSE event; with include_usage every chat chunk carries `usage: null`
    (legacy completion chunks have no `usage` key but in the usage chunk: see api/openai.py)."""
    if req.include_usage and req.kind == "chat":
        chunk["usage"] = None
    return sse.data(chunk)


def _chunks(gen: Generation, piece: Piece, rid: str, created: int, offsets: list[int]) -> list:
    model, i = gen.req.model, piece.index
    chunks = []
    if gen.req.kind == "completion":
        if not piece.empty or piece.finish_reason:
            chunks.append(
                openai.completion_chunk(
                    rid,
                    created,
                    model,
                    i,
                    piece.content,
                    piece.finish_reason,
                    piece.logprobs,
                    offsets[i],
                    piece.stop_reason,
                )
            )
            offsets[i] += len(piece.content)
        return chunks
    if not piece.empty:
        delta: dict = {}
        if piece.reasoning:
            delta["reasoning_content"] = piece.reasoning
        if piece.content or piece.logprobs:
            delta["content"] = piece.content
        if piece.tool_calls:
            delta["tool_calls"] = piece.tool_calls
        chunks.append(openai.chat_chunk(rid, created, model, i, delta, None, piece.logprobs))
    if piece.finish_reason:
        chunks.append(
            openai.chat_chunk(
                rid, created, model, i, {}, piece.finish_reason, stop_reason=piece.stop_reason
            )
        )
    return chunks


def _log(gen: Generation, status: int) -> None:
    seconds = time.perf_counter() - gen.started
    tokens = gen.completion_tokens
    ttft = gen.ttft
    decode = seconds - (ttft or 0.0)
    log.info(
        "%s model=%s status=%d stream=%s n=%d prompt_tokens=%d completion_tokens=%d"
        " cached_tokens=%d ttft=%s tok/s=%.1f seconds=%.3f",
        gen.req.kind,
        gen.model.id,
        status,
        gen.req.stream,
        gen.req.n,
        gen.prompt_tokens,
        tokens,
        gen.cached_tokens,
        f"{ttft:.3f}s" if ttft is not None else "-",
        tokens / decode if decode > 0 and tokens else 0.0,
        seconds,
    )
