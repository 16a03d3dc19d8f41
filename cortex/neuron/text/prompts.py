"""Turning a validated OpenAI request into prompt token ids for one loaded model.

Chat requests go through the model's chat template (with the request's `tools` and
`chat_template_kwargs`); legacy completions encode each prompt text (BOS as the model's
tokenizer config says) or take token ids as given. A constrained request (a JSON schema, a
forced or strict tool call: see grammar.py) renders with thinking switched off unless the
request set `enable_thinking` itself: the grammar then holds the answer from its first token.
"""

from __future__ import annotations

from typing import Any

from cortex.api.openai import GenerationRequest
from cortex.errors import ContextLengthExceeded, InvalidRequest
from cortex.neuron.text.tokenizer import Tokenizer


def template_kwargs(req: GenerationRequest) -> dict[str, Any]:
    """Chat template variables for `req`."""
    kwargs = dict(req.template_kwargs)
    if req.constrained:
        kwargs.setdefault("enable_thinking", False)
    return kwargs


def build_prompt(tokenizer: Tokenizer, req: GenerationRequest) -> list[int]:
    """Prompt token ids of `req` (its first prompt, for a batch of legacy prompts) for a model
    with `tokenizer`; 400 for unusable input."""
    return build_prompts(tokenizer, req)[0]


def build_prompts(tokenizer: Tokenizer, req: GenerationRequest) -> list[list[int]]:
    """Prompt token ids of every prompt of `req` (one for chat); 400 for unusable input."""
    if req.kind == "chat":
        return [
            _checked(tokenizer.encode_chat(req.messages, req.tools, True, **template_kwargs(req)))
        ]
    return [_checked(_completion_ids(tokenizer, prompt)) for prompt in req.prompts]


def _completion_ids(tokenizer: Tokenizer, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        return tokenizer.encode(prompt, add_special_tokens=True)
    vocab = tokenizer.vocab_size
    if any(t >= vocab for t in prompt):
        raise InvalidRequest(f"token ids must be below the vocabulary size {vocab}", param="prompt")
    return list(prompt)


def _checked(ids: list[int]) -> list[int]:
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
    else:  # a batch of completion prompts: the longest one decides
        ids = max((len(p) for p in req.prompts if not isinstance(p, str)), default=0)
        chars = max((len(p) for p in req.prompts if isinstance(p, str)), default=0)
        return max(ids, chars // (2 * tokenizer.max_token_chars))
    return chars // (2 * tokenizer.max_token_chars)


def check_prompt_size(tokenizer: Tokenizer, req: GenerationRequest, max_context: int) -> None:
    """Refuse at once (400 `context_length_exceeded`) a prompt that cannot fit `max_context`
    whatever its tokens, before tokenizing it: a 20 MB prompt must not hold the neuron's CPU
    and memory for seconds only to be refused."""
    least = min_prompt_tokens(tokenizer, req)
    if least >= max_context:
        raise ContextLengthExceeded(least, max_context)
