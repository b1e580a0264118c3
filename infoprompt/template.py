"""WARP-style templates at the token-id level.

    single:  [CLS] P_1 … P_np [MASK] x [SEP]
    pair:    [CLS] P_1 … P_np x1 [MASK] x2 [SEP]

Prompt slots always sit at positions 1..n_p, so inserting prompts is a slice assignment,
and the prompt-free template (docs/design.md, "The method") is the same ids with those slots
removed.
Truncation only ever cuts text tokens, never a prompt slot, the mask or a special token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from infoprompt.errors import InfoPromptError

__all__ = ["Encoded", "Template", "TemplateError", "prompt_free_ids"]


class TemplateError(InfoPromptError):
    """The tokenizer cannot express the template (e.g. it has no mask token)."""


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]  # prompted template; prompt slots hold a placeholder id
    mask_pos: int  # index of the mask token in input_ids
    text_ids: list[int]  # the text tokens alone (negatives for NCE_head come from these)


@dataclass(frozen=True)
class Template:
    n_prompts: int
    max_length: int
    cls_id: int
    sep_id: int
    mask_id: int
    prompt_id: int  # placeholder at prompt slots; its embedding is replaced, never seen

    @classmethod
    def for_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, *, n_prompts: int,
                      max_length: int) -> Template:
        if tokenizer.mask_token_id is None:
            raise TemplateError(f"tokenizer {tokenizer.name_or_path!r} has no mask token; "
                                "InfoPrompt needs a masked-LM encoder (BERT, RoBERTa, …)")
        cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None \
            else tokenizer.bos_token_id
        sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None \
            else tokenizer.eos_token_id
        if cls_id is None or sep_id is None:
            raise TemplateError(f"tokenizer {tokenizer.name_or_path!r} has no CLS/BOS or "
                                "SEP/EOS token to frame the template")
        prompt_id = tokenizer.unk_token_id if tokenizer.unk_token_id is not None \
            else tokenizer.pad_token_id
        return cls(n_prompts=n_prompts, max_length=max_length, cls_id=cls_id, sep_id=sep_id,
                   mask_id=tokenizer.mask_token_id, prompt_id=prompt_id)

    @property
    def text_budget(self) -> int:
        return self.max_length - self.n_prompts - 3  # CLS, MASK, SEP

    def encode(self, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> Encoded:
        pieces = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        pieces = _truncate_longest_first(pieces, self.text_budget)
        head = [self.cls_id] + [self.prompt_id] * self.n_prompts
        if len(pieces) == 1:
            ids = head + [self.mask_id] + pieces[0] + [self.sep_id]
            mask_pos = len(head)
        elif len(pieces) == 2:
            ids = head + pieces[0] + [self.mask_id] + pieces[1] + [self.sep_id]
            mask_pos = len(head) + len(pieces[0])
        else:
            raise TemplateError(f"a template takes one or two texts, got {len(pieces)}")
        return Encoded(ids, mask_pos, [t for p in pieces for t in p])


def _truncate_longest_first(pieces: list[list[int]], budget: int) -> list[list[int]]:
    pieces = [list(p) for p in pieces]
    while sum(map(len, pieces)) > budget:
        max(pieces, key=len).pop()
    return pieces


def prompt_free_ids(input_ids: list[int], n_prompts: int) -> list[int]:
    """The prompt-free template: the prompted ids without the slots at 1..n_p."""
    return input_ids[:1] + input_ids[1 + n_prompts:]
