"""The model's tokenizer: `tokenizers` for text <-> ids, plus the chat template and special tokens.

BOS follows the model's files, as transformers does: plain `encode` adds what the tokenizer.json
post-processor adds (Llama 3 and Llama 2 style tokenizers add BOS, Qwen adds nothing), plus a BOS
when `add_bos` is set and the post-processor did not add one (tokenizers built from GGUF metadata).
A rendered chat is tokenized with `add_special_tokens=False`, exactly as
`apply_chat_template(tokenize=True)` does: templates that need BOS (Llama 3) write it themselves.
Special-token text inside messages is encoded as those special tokens, as HF does by default.

Decoding never applies `clean_up_tokenization_spaces`: it rewrites text (" ." -> "."), and the
streamed text would then differ from the text the model produced.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tokenizers

from cortex.errors import InvalidRequest, ModelLoadFailed
from cortex.neuron.text.chat_template import ChatTemplate, load_chat_template, render_chat_template

THINK_TAGS = ("<think>", "</think>")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json writes special tokens either as strings or as AddedToken dicts.
    if isinstance(value, Mapping):
        return value.get("content")
    return value if isinstance(value, str) else None


def _id_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _add_missing_tokens(hf: tokenizers.Tokenizer, added: Mapping[str, Any]) -> None:
    # transformers adds the tokens that tokenizer_config.json declares and tokenizer.json lacks.
    for spec in added.values():
        if not isinstance(spec, Mapping) or hf.token_to_id(spec.get("content", "")) is not None:
            continue
        token = tokenizers.AddedToken(
            spec["content"],
            single_word=spec.get("single_word", False),
            lstrip=spec.get("lstrip", False),
            rstrip=spec.get("rstrip", False),
            normalized=spec.get("normalized", not spec.get("special", False)),
            special=spec.get("special", False),
        )
        hf.add_tokens([token])


def generation_defaults(path: Path | str) -> dict[str, Any]:
    """Sampling defaults from a model directory's `generation_config.json`, named as in
    `SamplingParams`: temperature, top_p, top_k, min_p, repetition_penalty, max_tokens (from
    max_new_tokens), plus eos_token_ids. `do_sample: false` means greedy (temperature 0), as in
    transformers. Keys the file does not set are absent; a missing file gives {}."""
    config = _read_json(Path(path) / "generation_config.json")
    out: dict[str, Any] = {}
    for key in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty"):
        if config.get(key) is not None:
            out[key] = config[key]
    if config.get("max_new_tokens") is not None:
        out["max_tokens"] = int(config["max_new_tokens"])
    if config.get("do_sample") is False:
        out["temperature"] = 0.0
    if config.get("eos_token_id") is not None:
        out["eos_token_ids"] = _id_list(config["eos_token_id"])
    return out


class Tokenizer:
    """Text <-> token ids, chat rendering and the special tokens of one model.

    Attributes besides the constructor's: `bos_token_id` (None when there is no BOS),
    `eos_token_ids` (generation_config's, plus the tokenizer's EOS), `special_tokens` (the
    template variables bos_token, eos_token, ...), `special_ids` (ids that `skip_special_tokens`
    drops), `byte_token_ids` (byte-fallback `<0xNN>` ids), `vocab_size` (added tokens included),
    `think_tokens` (("<think>", "</think>") when the vocabulary has both), `tool_format`
    ("hermes", "llama3_json" or None: how the model writes tool calls).
    """

    def __init__(
        self,
        hf: tokenizers.Tokenizer,
        chat_template: ChatTemplate | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        add_bos: bool = False,
        eos_token_ids: Sequence[int] = (),
        special: Mapping[str, Any] | None = None,
    ) -> None:
        """`chat_template` is a template string or a dict of named templates; `special` holds
        further special-token template variables (pad_token, unk_token, ...)."""
        self.hf = hf
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.add_bos = add_bos
        self.bos_token_id = self.token_id(bos_token) if bos_token else None
        eos_ids = list(eos_token_ids)
        eos_id = self.token_id(eos_token) if eos_token else None
        if eos_id is not None and eos_id not in eos_ids:
            eos_ids.append(eos_id)
        self.eos_token_ids: list[int] = eos_ids
        self.special_tokens: dict[str, Any] = {
            k: v
            for k, v in {"bos_token": bos_token, "eos_token": eos_token, **(special or {})}.items()
            if v is not None
        }
        added = hf.get_added_tokens_decoder()
        self.special_ids: frozenset[int] = frozenset(i for i, t in added.items() if t.special)
        self.vocab_size: int = hf.get_vocab_size(with_added_tokens=True)
        self.byte_token_ids: frozenset[int] = self._byte_tokens()
        has_think = all(self.token_id(t) is not None for t in THINK_TAGS)
        self.think_tokens: tuple[str, str] | None = THINK_TAGS if has_think else None
        self.tool_format: str | None = self._detect_tool_format()

    @classmethod
    def from_dir(cls, path: Path | str) -> Tokenizer:
        """Load `tokenizer.json`, `tokenizer_config.json`, the chat template and the EOS ids of
        `generation_config.json` from a model directory."""
        path = Path(path)
        try:
            hf = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception for missing or bad files
            raise ModelLoadFailed(f"cannot load {path / 'tokenizer.json'}: {e}") from e
        config = _read_json(path / "tokenizer_config.json")
        _add_missing_tokens(hf, config.get("added_tokens_decoder") or {})
        special = {
            k: _token_text(config.get(k))
            for k in ("unk_token", "pad_token", "sep_token", "cls_token")
        }
        return cls(
            hf,
            chat_template=load_chat_template(path, config),
            bos_token=_token_text(config.get("bos_token")),
            eos_token=_token_text(config.get("eos_token")),
            add_bos=bool(config.get("add_bos_token", False)),
            eos_token_ids=generation_defaults(path).get("eos_token_ids", []),
            special=special,
        )

    def _byte_tokens(self) -> frozenset[int]:
        # Byte-fallback tokenizers (Llama 2, Mistral) spell rare characters as `<0xNN>` tokens.
        if not getattr(self.hf.model, "byte_fallback", False):
            return frozenset()
        ids = (self.token_id(f"<0x{b:02X}>") for b in range(256))
        return frozenset(i for i in ids if i is not None)

    def _detect_tool_format(self) -> str | None:
        templates = self.chat_template if isinstance(self.chat_template, dict) else {}
        text = "\n".join(templates.values()) if templates else (self.chat_template or "")
        if "<tool_call>" in text:
            return "hermes"
        if self.token_id("<|python_tag|>") is not None:
            return "llama3_json"
        return "hermes" if self.token_id("<tool_call>") is not None else None

    def token_id(self, token: str) -> int | None:
        """The id of one token's text, or None when the vocabulary lacks it."""
        return self.hf.token_to_id(token)

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters one token can stand for: the longest vocabulary entry (a
        byte-level entry spells one byte per character, so it never undercounts)."""
        return max((len(t) for t in self.hf.get_vocab(with_added_tokens=True)), default=1) or 1

    @property
    def has_chat_template(self) -> bool:
        """Whether `render_chat` can be used."""
        return bool(self.chat_template)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with `add_special_tokens`, BOS as the model's config says."""
        ids = self.hf.encode(text, add_special_tokens=add_special_tokens).ids
        bos = self.bos_token_id
        if add_special_tokens and self.add_bos and bos is not None and ids[:1] != [bos]:
            ids.insert(0, bos)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids` (special tokens left out unless `skip_special_tokens` is False)."""
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(
        self,
        messages: Sequence[Any],
        tools: Sequence[Any] | None = None,
        add_generation_prompt: bool = True,
        /,
        **template_kwargs: Any,
    ) -> str:
        """The prompt text for `messages` (OpenAI-style, normalised first) and OpenAI function
        `tools`; `template_kwargs` are template variables such as `enable_thinking`, passed
        straight from a request's `chat_template_kwargs` if need be: `tools` and
        `add_generation_prompt` given there are used when not given positionally, and
        `messages` there is ignored. Raises `InvalidRequest` when the model has no chat
        template or the template fails."""
        if not self.chat_template:
            raise InvalidRequest("this model has no chat template; use /v1/completions")
        variables = dict(template_kwargs)
        variables.pop("messages", None)
        keyword_tools = variables.pop("tools", None)
        add_generation_prompt = bool(variables.pop("add_generation_prompt", add_generation_prompt))
        return render_chat_template(
            self.chat_template,
            messages,
            keyword_tools if tools is None else tools,
            add_generation_prompt,
            {**self.special_tokens, **variables},
        )

    def encode_chat(
        self,
        messages: Sequence[Any],
        tools: Sequence[Any] | None = None,
        add_generation_prompt: bool = True,
        /,
        **template_kwargs: Any,
    ) -> list[int]:
        """Token ids of `render_chat(...)`, tokenized as `apply_chat_template(tokenize=True)`."""
        text = self.render_chat(messages, tools, add_generation_prompt, **template_kwargs)
        return self.encode(text, add_special_tokens=False)
