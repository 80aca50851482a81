"""Tokenisation of question/answer pairs and padding into batches.

Conventions every module shares (optimizers' curvature estimators, objectives, evaluation):

* An encoded item is ``[BOS] + prefix tokens + continuation tokens + [EOS]`` (a question's
  prompt and its answer, a prompt and its continuation); prefix and continuation are tokenised
  separately so the boundary is exact whatever the tokenizer merges. Raw text for training is
  cut into chunks, every token a label (:func:`encode_text_chunks`).
* ``labels`` equal ``input_ids`` on continuation tokens and the closing EOS, and are ``-100``
  on BOS, prefix and padding: only the answer is trained on or scored.
* Labels are *unshifted* (Hugging Face convention): ``logits[:, t]`` predicts token ``t + 1``,
  so a loss compares ``logits[:, :-1]`` with ``labels[:, 1:]``.
* Answer positions: ``answer_mask`` / ``pick_answer_logits`` / ``answer_logprobs`` below are the
  one definition every layer uses; a model reads a batch through ``forward_logits`` and is
  evaluated inside ``eval_mode``.
* Padding uses the tokenizer's pad id, which must differ from EOS (a pad = EOS tokenizer would
  mask real end-of-answer tokens); ``attention_mask`` is 0 on padding.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

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


def encode_pairs(
    tokenizer,
    prefixes: Sequence[str],
    continuations: Sequence[str],
    max_length: int = 512,
    eos: bool | Sequence[bool] = True,
) -> list[EncodedItem]:
    """Encode (prefix, continuation) pairs: ``[BOS] + prefix + continuation [+ EOS]``, labels on
    the continuation (and its EOS) only. The continuation is cut from the right to fit
    ``max_length``; a prefix that leaves no room is a user error. ``eos`` (one flag, or one per
    pair) appends the EOS: an answer's end is part of it, a raw text's is not."""
    if len(prefixes) != len(continuations):
        raise ValueError("prefixes and continuations differ in length")
    flags = [eos] * len(prefixes) if isinstance(eos, bool) else list(eos)
    heads = _ids(tokenizer, list(prefixes))
    tails = _ids(tokenizer, list(continuations))
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    out: list[EncodedItem] = []
    for p, a, close in zip(heads, tails, flags):
        head = bos + list(p)
        tail = (list(a) + ([tokenizer.eos_token_id] if close else []))[: max(0, max_length - len(head))]
        if not tail:
            raise UserError(
                f"a prompt is {len(head)} tokens, leaving no room for its answer within "
                f"max_length={max_length}; raise data.max_length"
            )
        out.append(EncodedItem(head + tail, [IGNORE_INDEX] * len(head) + tail))
    return out


def encode_qa_batch(
    tokenizer,
    template: PromptTemplate,
    questions: Sequence[str],
    answers: Sequence[str],
    max_length: int = 512,
) -> list[EncodedItem]:
    """Question/answer pairs under ``template``: :func:`encode_pairs` of ``template.prompt(q)``
    and the answer closed by EOS."""
    if len(questions) != len(answers):
        raise ValueError("questions and answers differ in length")
    return encode_pairs(tokenizer, [template.prompt(q) for q in questions], answers, max_length)


def encode_text_chunks(tokenizer, texts: Sequence[str], max_length: int) -> list[EncodedItem]:
    """Raw text for causal-LM training: each text as ``[BOS] + tokens + [EOS]``, cut into
    consecutive chunks of at most ``max_length`` tokens, every token a label (plain next-token
    loss over the whole chunk; MUSE trains on its corpora this way, in fixed-length chunks).
    Chunks do not cross texts, so a passage is never glued to the next one."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    out: list[EncodedItem] = []
    for ids in _ids(tokenizer, list(texts)):
        seq = bos + list(ids) + [tokenizer.eos_token_id]
        for start in range(0, len(seq), max_length):
            chunk = seq[start:start + max_length]
            if len(chunk) > 1:  # a lone token has nothing to predict
                out.append(EncodedItem(chunk, list(chunk)))
    return out


def encode_prompt_texts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Prompt ids (with BOS) for generation; ``prompts`` are the texts as the model sees them."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [bos + list(p) for p in _ids(tokenizer, list(prompts))]


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


def answer_mask(labels: torch.Tensor) -> torch.Tensor:
    """``[B, T-1]`` bool: the positions of ``logits[:, :-1]`` that predict an answer token."""
    return labels[:, 1:] != IGNORE_INDEX


def pick_answer_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The answer positions of ``[B, T, V]`` logits, ``[n_tokens, V]`` in row-major order, in
    fp32 (fp64 stays fp64); their labels are ``labels[:, 1:][answer_mask(labels)]``."""
    picked = logits[:, :-1][answer_mask(labels)]
    return picked.to(torch.promote_types(picked.dtype, torch.float32))


def answer_logprobs(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each answer label ``[B, T-1]`` (0 off answers) and the answer mask.

    ``F.cross_entropy(reduction="none")`` in fp32 avoids keeping a separate log-softmax tensor.
    """
    target = labels[:, 1:]
    nll = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),
        target.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return -nll.view_as(target), answer_mask(labels)


def forward_logits(model: torch.nn.Module, data: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[B, T, V]`` logits of a batch (only ``input_ids`` and ``attention_mask`` go to the model)."""
    return model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode (no dropout) inside the block; afterwards every module gets its own
    train/eval flag back, so a model whose parts were deliberately in eval mode (a frozen
    submodule) is left exactly as it was, which ``model.train(was_training)`` would not do."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag
