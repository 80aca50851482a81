"""Tokenisation of question/answer pairs and padding into batches.

Conventions every module shares (optimizers' curvature estimators, objectives, evaluation):

* An encoded item is ``[BOS] + prompt tokens + answer tokens + [EOS]``; prompt and answer are
  tokenised separately so the boundary is exact whatever the tokenizer merges.
* ``labels`` equal ``input_ids`` on answer tokens and the closing EOS, and are ``-100`` on
  BOS, prompt and padding: only the answer is trained on or scored.
* Labels are *unshifted* (Hugging Face convention): ``logits[:, t]`` predicts token ``t + 1``,
  so a loss compares ``logits[:, :-1]`` with ``labels[:, 1:]``.
* Padding uses the tokenizer's pad id, which must differ from EOS (a pad = EOS tokenizer would
  mask real end-of-answer tokens); ``attention_mask`` is 0 on padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from soulcli.data.template import PromptTemplate
from soulcli.errors import UserError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedItem:
    input_ids: list[int]
    labels: list[int]


def check_special_tokens(tokenizer) -> None:
    """Refuse a tokenizer without EOS, or whose pad token is EOS (masks real end tokens)."""
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token; use a tokenizer with eos_token set")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise UserError(
            "the tokenizer's pad token is missing or equals EOS; call ensure_pad_token() "
            "(soulcli.models.loading) so padding never reuses a meaningful id"
        )


def _ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    # split_special_tokens: text that happens to contain "</s>" or "<pad>" is plain text, never
    # the EOS / pad id (which would end an answer early or be masked as padding).
    return tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]


def encode_qa_batch(
    tokenizer,
    template: PromptTemplate,
    questions: Sequence[str],
    answers: Sequence[str],
    max_length: int = 512,
) -> list[EncodedItem]:
    """Encode pairs; the answer (and its EOS) is truncated from the right to fit ``max_length``."""
    if len(questions) != len(answers):
        raise ValueError("questions and answers differ in length")
    prompts = _ids(tokenizer, [template.prompt(q) for q in questions])
    answer_ids = _ids(tokenizer, list(answers))
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = tokenizer.eos_token_id
    out: list[EncodedItem] = []
    for p, a in zip(prompts, answer_ids):
        head = bos + list(p)
        tail = (list(a) + [eos])[: max(0, max_length - len(head))]
        if not tail:
            raise UserError(
                f"a prompt is {len(head)} tokens, leaving no room for its answer within "
                f"max_length={max_length}; raise data.max_length"
            )
        out.append(EncodedItem(head + tail, [IGNORE_INDEX] * len(head) + tail))
    return out


def encode_prompts(tokenizer, template: PromptTemplate, questions: Sequence[str]) -> list[list[int]]:
    """Prompt ids (with BOS) for generation."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [bos + list(p) for p in _ids(tokenizer, [template.prompt(q) for q in questions])]


def pad_batch(
    items: Sequence[EncodedItem], pad_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad to the longest item: ``input_ids``, ``attention_mask``, ``labels`` (long tensors)."""
    width = max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it.input_ids)
        sl = slice(0, n) if padding_side == "right" else slice(width - n, width)
        ids[row, sl] = torch.tensor(it.input_ids)
        labels[row, sl] = torch.tensor(it.labels)
        mask[row, sl] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompt ids for batched generation."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[row, width - len(p):] = 1
    return {"input_ids": ids, "attention_mask": mask}


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position log-probability of each label and the answer mask, both ``[B, T-1]``.

    Computed in fp32 with log_softmax; masked positions hold 0.
    """
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask
