"""Tokenisation of question/answer pairs and padding into batches.

Conventions every module shares (optimizers' curvature estimators, objectives, evaluation):

* An item is the tokenizer's own encoding of the whole sequence ``prefix + continuation`` (a
  question's prompt and its answer, a prompt and its continuation), tokenised once with the
  tokenizer's special tokens (BOS where the tokenizer adds it, never otherwise), then the EOS
  appended once (not when the sequence already ends with it, as a chat template's closing turn
  may), as TOFU's and open-unlearning's data code do. Raw text for training is cut into chunks,
  every token a label (:func:`encode_text_chunks`).
* The label boundary is decided by character offsets (a fast tokenizer's ``offset_mapping``):
  a token is a label iff it overlaps the continuation's characters. Where a merge crosses the
  boundary (a prompt ending in a space: ``"Answer: " + "The"`` is ``':', 'ĠThe'``, not
  ``':', 'Ġ', 'The'``), the merged token is a label. open-unlearning instead masks
  ``len(tokenize(prompt))`` tokens, which in that case masks the answer's first word too.
* ``labels`` equal ``input_ids`` on continuation tokens and the closing EOS, and are ``-100``
  on BOS, prefix and padding: only the answer is trained on or scored. Labels come from the
  encoder, never from ``input_ids``, so the pad id may be any existing token (EOS included).
* The prompt a model generates from is exactly what it saw in training: the tokens before the
  first label (:func:`prompt_ids`).
* Special tokens: a special token's text is that special token where a template writes it
  (``<|start_header_id|>``, a Zephyr ``</s>``: the strings passed as ``specials``); anywhere
  else (inside a question, an answer, a raw text) it is plain text, re-encoded on its own (a
  SentencePiece tokenizer then marks it as a word start). A string the template itself writes
  (Zephyr's ``</s>``) is special wherever it appears.
* A sequence longer than ``max_length`` is cut from the right (its EOS with it) and marked
  ``truncated``; callers count and report those, never silently.
* Labels are *unshifted* (Hugging Face convention): ``logits[:, t]`` predicts token ``t + 1``,
  so a loss compares ``logits[:, :-1]`` with ``labels[:, 1:]``.
* Answer positions: ``answer_mask`` / ``pick_answer_logits`` / ``answer_logprobs`` below are the
  one definition every layer uses; a model reads a batch through ``forward_logits`` and is
  evaluated inside ``eval_mode``.
* Padding uses :func:`pad_id` (the tokenizer's pad token, else an existing one: no token is
  added and no embedding resized); ``attention_mask`` is 0 on padding.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from soulcli.data.template import CHAT_MARK, PromptTemplate
from soulcli.errors import UserError

IGNORE_INDEX = -100


def unreferenced_prompt(prompt: str) -> str:
    """The prompt text of a generation without a reference answer: less its trailing spaces,
    which byte-level BPE and SentencePiece tokenizers put in the answer's first token (``':',
    'ĠThe'``), so the model is prompted with the tokens it saw before answers in training."""
    return prompt.rstrip(" ")


@dataclass(frozen=True)
class EncodedItem:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False  # cut by max_length

    @property
    def prompt_length(self) -> int:
        """The number of tokens before the first label (the prompt the model conditions on)."""
        return next((i for i, y in enumerate(self.labels) if y != IGNORE_INDEX), len(self.labels))


def check_special_tokens(tokenizer) -> None:
    """Refuse a tokenizer without EOS, or one without character offsets (a slow tokenizer)."""
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token; use a tokenizer with eos_token set")
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("the tokenizer is not a fast tokenizer (no character offsets); save the "
                        "model with a tokenizer.json (transformers' fast tokenizer)")


def pad_id(tokenizer) -> int:
    """The id padding uses: the pad token, else UNK, else EOS. Padding is masked by
    ``attention_mask`` and never a label, so any existing id serves and nothing is added."""
    for tid in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    raise UserError("the tokenizer has no pad, unk or EOS token; use a tokenizer with eos_token set")


def _encode(tokenizer, text: str, specials: Sequence[str]) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and character offsets of ``text``, the tokenizer's special tokens included (BOS
    where it adds one; not for a chat template, ``CHAT_MARK`` in ``specials``); a special token
    whose text no string of ``specials`` contains is re-encoded as plain text."""
    # A chat template writes its own BOS (or none): encoded as apply_chat_template encodes it,
    # without the tokenizer's own special tokens.
    enc = tokenizer(text, add_special_tokens=CHAT_MARK not in specials, return_offsets_mapping=True,
                    split_special_tokens=not specials)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if not specials:
        return ids, offsets
    special_ids = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    out_ids: list[int] = []
    out_offsets: list[tuple[int, int]] = []
    for tid, (s, e) in zip(ids, offsets):
        piece = text[s:e]
        if tid in special_ids and e > s and not any(piece in t for t in specials):
            sub = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True,
                            split_special_tokens=True)
            out_ids.extend(sub["input_ids"])
            out_offsets.extend((s + a, s + b) for a, b in sub["offset_mapping"])
        else:
            out_ids.append(tid)
            out_offsets.append((s, e))
    return out_ids, out_offsets


def encode_pair(tokenizer, prefix: str, continuation: str, max_length: int | None = 512,
                eos: bool = True, specials: Sequence[str] = ()) -> EncodedItem:
    """``prefix + continuation`` tokenised once, labels on the tokens overlapping the
    continuation's characters (and the EOS, appended once when ``eos``: an answer's end is part
    of it, a raw text's is not). Longer than ``max_length`` (``None``: no limit): cut from the
    right and marked ``truncated``; a prompt that leaves no room for a label is a user error."""
    ids, offsets = _encode(tokenizer, prefix + continuation, specials)
    eos_id = tokenizer.eos_token_id
    if ids and ids[-1] == eos_id and offsets[-1][1] == offsets[-1][0]:
        ids, offsets = ids[:-1], offsets[:-1]  # the tokenizer's own appended EOS: decided below
    start = len(prefix)
    labels = [tid if e > start and e > s else IGNORE_INDEX for tid, (s, e) in zip(ids, offsets)]
    if eos and not (ids and ids[-1] == eos_id and labels[-1] != IGNORE_INDEX):
        ids, labels = ids + [eos_id], labels + [eos_id]
    item = EncodedItem(ids, labels)
    if max_length is not None and len(ids) > max_length:
        item = EncodedItem(ids[:max_length], labels[:max_length], truncated=True)
        if item.prompt_length >= max_length:
            raise UserError(f"a prompt is {EncodedItem(ids, labels).prompt_length} tokens, leaving no "
                            f"room for its answer within max_length={max_length}; raise data.max_length")
    return item


def encode_pairs(
    tokenizer,
    prefixes: Sequence[str],
    continuations: Sequence[str],
    max_length: int | None = 512,
    eos: bool | Sequence[bool] = True,
    specials: Sequence[str] = (),
) -> list[EncodedItem]:
    """:func:`encode_pair` of each (prefix, continuation); ``eos`` one flag or one per pair."""
    if len(prefixes) != len(continuations):
        raise ValueError("prefixes and continuations differ in length")
    flags = [eos] * len(prefixes) if isinstance(eos, bool) else list(eos)
    return [encode_pair(tokenizer, p, c, max_length, close, specials)
            for p, c, close in zip(prefixes, continuations, flags)]


def encode_qa_batch(
    tokenizer,
    template: PromptTemplate,
    questions: Sequence[str],
    answers: Sequence[str],
    max_length: int | None = 512,
) -> list[EncodedItem]:
    """Question/answer pairs under ``template``: :func:`encode_pairs` of ``template.prompt(q)``
    and ``template.completion(a)``, closed by EOS, the template's special tokens honoured (a chat
    template rendered by ``tokenizer``: :meth:`PromptTemplate.resolved`)."""
    if len(questions) != len(answers):
        raise ValueError("questions and answers differ in length")
    template = template.resolved(tokenizer)
    return encode_pairs(tokenizer, [template.prompt(q) for q in questions],
                        [template.completion(a) for a in answers], max_length, True, template.strings)


def prompt_ids(tokenizer, prefix: str, continuation: str, specials: Sequence[str] = ()) -> list[int]:
    """The prompt of a pair as the model saw it in training: the tokens of the whole
    sequence's encoding before its first label (for generation)."""
    item = encode_pair(tokenizer, prefix, continuation, None, True, specials)
    return item.input_ids[:item.prompt_length]


def encode_text_chunks(tokenizer, texts: Sequence[str], max_length: int) -> list[EncodedItem]:
    """Raw text for causal-LM training: each text as the tokenizer encodes it (its BOS where it
    adds one) then EOS, cut into consecutive chunks of at most ``max_length`` tokens, every
    token a label (plain next-token loss over the whole chunk; MUSE trains on its corpora this
    way, in fixed-length chunks). Chunks do not cross texts, so a passage is never glued to the
    next one."""
    out: list[EncodedItem] = []
    for text in texts:
        seq = encode_pair(tokenizer, "", text, None, True).input_ids
        for start in range(0, len(seq), max_length):
            chunk = seq[start:start + max_length]
            if len(chunk) > 1:  # a lone token has nothing to predict
                out.append(EncodedItem(chunk, list(chunk)))
    return out


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
