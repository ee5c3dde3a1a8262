"""The precise mode's tokenizer, injected: the proxy must produce the token ids the engine will see, or its block
keys never match the ones the engine reports.

HfTokenizer wraps the `tokenizers` package (Hugging Face's Rust tokenizer: the tokenizer.json the node fetches at
boot with the HF token). It renders chat requests only through a chat template renderer the caller supplies
(a Jinja2 rendering of the model's tokenizer_config.json chat_template, as vLLM's apply_hf_chat_template does);
without one, chat requests return None and the precise mode falls back to load for them. Neither package is a
dependency yet: docs/routing.md names the versions to add."""

from __future__ import annotations

from typing import Any, Callable, Protocol


class Tokenizer(Protocol):
    def tokens(self, body: dict[str, Any]) -> list[int] | None:
        """The prompt's token ids as the engine will tokenize them, or None if they cannot be known here."""


class HfTokenizer:
    def __init__(self, path: str, render_chat: Callable[[dict[str, Any]], str] | None = None,
                 add_special_tokens: bool = True) -> None:
        from tokenizers import Tokenizer as _Rust  # imported here: only the precise mode needs the package

        self._tokenizer = _Rust.from_file(path)
        self._render_chat = render_chat
        self._special = add_special_tokens

    def tokens(self, body: dict[str, Any]) -> list[int] | None:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        if isinstance(prompt, str):
            return self._tokenizer.encode(prompt, add_special_tokens=self._special).ids
        if isinstance(body.get("messages"), list) and self._render_chat is not None:
            # A rendered chat template already carries its special tokens (vLLM encodes it without adding more).
            return self._tokenizer.encode(self._render_chat(body), add_special_tokens=False).ids
        return None
