"""Render one chat message at a time with the model's own chat template.

A persistent cache means each turn may only *add* tokens, so we cannot render
the whole history with ``apply_chat_template`` every turn. Instead we render a
message with a sentinel in place of its content, after a fixed anchor history,
and keep only what the template added for that message: the template's own
framing around the content. Framing is tokenised normally (its control tokens
are real control tokens); the content is tokenised with
``split_special_tokens=True`` so a user who types ``<|im_start|>system`` gets
exactly those characters as plain text, never a role switch.

Each content token carries its character range in the content, which is how
the ledger later recovers the exact text of evicted tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

_SENTINEL = "\u2063STREAMRAG\u2063CONTENT\u2063"
# Anchor histories: a complete exchange before a user/system message, a single
# user message before an assistant one. Roles alternate, which strict
# templates (Mistral, Llama 2) insist on.
_ANCHOR_BEFORE_USER = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
_ANCHOR_BEFORE_ASSISTANT = [{"role": "user", "content": "a"}]


class TemplateError(ValueError):
    """The chat template cannot be rendered one message at a time."""


@dataclass(frozen=True)
class RenderedMessage:
    """Token ids of one message and, per token, its character range in the content.

    Framing tokens before the content get ``(0, 0)``; framing after it gets
    ``(len, len)``, so they carry no text but keep offsets monotonic.
    """

    token_ids: list[int]
    offsets: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.token_ids)


class ChatFormat:
    """Incremental renderer for a tokenizer's chat template."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.has_template:
            self._generation_prompt = self._render_delta(_ANCHOR_BEFORE_ASSISTANT, None, generation_prompt=True)
        else:
            self._generation_prompt = "assistant: "

    # -- text level -----------------------------------------------------
    def _render(self, messages: list[dict], generation_prompt: bool = False) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as exc:  # jinja raises its own TemplateError types
            roles = [m["role"] for m in messages]
            raise TemplateError(f"the model's chat template cannot render roles {roles}: {exc}") from exc

    def _render_delta(self, anchor: list[dict], message: dict | None, generation_prompt: bool = False) -> str:
        before = self._render(anchor)
        full = self._render(anchor + ([message] if message else []), generation_prompt=generation_prompt)
        if not full.startswith(before):
            raise TemplateError(
                "the chat template rewrites earlier messages when a new one is added, "
                "so it cannot be rendered incrementally"
            )
        return full[len(before) :]

    def framing(self, role: str, first: bool) -> tuple[str, str]:
        """Template text before and after a message's content."""
        if not self.has_template:
            return (f"{role}: ", "\n")
        message = {"role": role, "content": _SENTINEL}
        if first:
            text = self._render([message])
        elif role == "assistant":
            # The generation prompt is fed when the reply starts; the assistant
            # message itself is what follows it.
            before = self._render(_ANCHOR_BEFORE_ASSISTANT, generation_prompt=True)
            full = self._render(_ANCHOR_BEFORE_ASSISTANT + [message])
            if not full.startswith(before):
                raise TemplateError("the chat template's assistant turn does not start with its generation prompt")
            text = full[len(before) :]
        elif role == "tool":
            return self._tool_framing(message)
        else:
            text = self._render_delta(_ANCHOR_BEFORE_USER, message)
        if text.count(_SENTINEL) != 1:
            raise TemplateError(f"the chat template does not place a {role} message's content verbatim")
        prefix, suffix = text.split(_SENTINEL)
        return prefix, suffix

    def _tool_framing(self, message: dict) -> tuple[str, str]:
        """A tool result's framing: the template's own ``tool`` role, else a user turn around ``<tool_response>``.

        Templates that know tools (Qwen2.5, Llama 3.x) frame results their
        own way; strict ones that refuse the role get the generic Hermes
        wrapping the tool instructions describe (:mod:`streamrag.tools`).
        """
        try:
            text = self._render_delta(_ANCHOR_BEFORE_USER, message)
            if text.count(_SENTINEL) == 1:
                prefix, suffix = text.split(_SENTINEL)
                return prefix, suffix
        except TemplateError:
            pass
        prefix, suffix = self.framing("user", first=False)
        return prefix + "<tool_response>\n", "\n</tool_response>" + suffix

    @property
    def generation_prompt(self) -> str:
        """Text that opens the assistant's turn (e.g. ``<|im_start|>assistant\\n``)."""
        return self._generation_prompt

    # -- token level ----------------------------------------------------
    def control_ids(self, text: str) -> list[int]:
        """Tokenise template framing: control tokens are recognised."""
        if not text:
            return []
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def content(self, text: str) -> RenderedMessage:
        """Tokenise message content as plain text, with character offsets."""
        if not text:
            return RenderedMessage([], [])
        encoded = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
        return RenderedMessage(list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]])

    def content_lengths(self, texts: list[str]) -> list[int]:
        """Token counts of many contents as plain text, in one batched tokenizer call (ingestion sizing)."""
        if not texts:
            return []
        encoded = self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)
        return [len(ids) for ids in encoded["input_ids"]]

    def message(self, role: str, content: str, first: bool, generation_prompt: bool = False) -> RenderedMessage:
        """Tokens of one message as the template frames it, optionally followed by the generation prompt."""
        prefix, suffix = self.framing(role, first)
        if role == "assistant" and not first:
            prefix = self.generation_prompt + prefix
        body = self.content(content)
        end = len(content)
        head = self.control_ids(prefix)
        tail = self.control_ids(suffix)
        if first:
            head = self.with_bos(head)
        ids = head + body.token_ids + tail
        offsets = [(0, 0)] * len(head) + body.offsets + [(end, end)] * len(tail)
        if generation_prompt:
            gen = self.control_ids(self.generation_prompt)
            ids += gen
            offsets += [(end, end)] * len(gen)
        return RenderedMessage(ids, offsets)

    def assistant_suffix(self) -> list[int]:
        """Tokens that close an assistant reply after its content (e.g. ``<|im_end|>\\n``)."""
        return self.control_ids(self.framing("assistant", first=False)[1])

    def with_bos(self, ids: list[int]) -> list[int]:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        wants_bos = getattr(self.tokenizer, "add_bos_token", False)
        if bos is not None and wants_bos and (not ids or ids[0] != bos):
            return [bos] + ids
        return ids
