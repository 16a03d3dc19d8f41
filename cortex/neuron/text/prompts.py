"""Turning a validated OpenAI request into prompt token ids for one loaded model.

Chat requests go through the model's chat template (with the request's `tools` and
`chat_template_kwargs`); legacy completions encode the prompt text (BOS as the model's tokenizer
config says) or take token ids as given. With `response_format` json_object the answer is forced
to open with `{` (see json_mode.py): thinking is switched off unless the request set
`enable_thinking` itself, and the brace is appended to the prompt.
"""

from __future__ import annotations

from typing import Any

from cortex.api.openai import GenerationRequest
from cortex.errors import ContextLengthExceeded, InvalidRequest
from cortex.neuron.text.tokenizer import Tokenizer

JSON_PREFIX = "{"


def template_kwargs(req: GenerationRequest) -> dict[str, Any]:
    """Chat template variables for `req`."""
    kwargs = dict(req.template_kwargs)
    if req.json_mode:
        kwargs.setdefault("enable_thinking", False)
    return kwargs


def build_prompt(tokenizer: Tokenizer, req: GenerationRequest) -> list[int]:
    """Prompt token ids of `req` for a model with `tokenizer`; 400 for unusable input."""
    if req.kind == "chat":
        ids = tokenizer.encode_chat(req.messages, req.tools, True, **template_kwargs(req))
    elif isinstance(req.prompt, str):
        ids = tokenizer.encode(req.prompt, add_special_tokens=True)
    else:
        ids = list(req.prompt or [])
        vocab = tokenizer.vocab_size
        if any(t >= vocab for t in ids):
            raise InvalidRequest(
                f"token ids must be below the vocabulary size {vocab}", param="prompt"
            )
    if req.json_mode:
        ids = ids + tokenizer.encode(JSON_PREFIX, add_special_tokens=False)
    if not ids:
        raise InvalidRequest("the prompt is empty", param="prompt")
    return ids


def min_prompt_tokens(tokenizer: Tokenizer, req: GenerationRequest) -> int:
    """A lower bound of the prompt's token count, in time linear in the request's text and
    without tokenizing: its characters over the most one token can stand for, halved for
    normalizers that merge characters. Template text and tools only add to the real count."""
    chars = 0
    if req.kind == "chat":
        for message in req.messages or []:
            content = message.get("content")
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                chars += sum(len(part.get("text") or "") for part in content)
    elif isinstance(req.prompt, str):
        chars = len(req.prompt)
    else:
        return len(req.prompt or [])
    return chars // (2 * tokenizer.max_token_chars)


def check_prompt_size(tokenizer: Tokenizer, req: GenerationRequest, max_context: int) -> None:
    """Refuse at once (400 `context_length_exceeded`) a prompt that cannot fit `max_context`
    whatever its tokens, before tokenizing it: a 20 MB prompt must not hold the neuron's CPU
    and memory for seconds only to be refused."""
    least = min_prompt_tokens(tokenizer, req)
    if least >= max_context:
        raise ContextLengthExceeded(least, max_context)
