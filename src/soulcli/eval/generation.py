"""Batched greedy generation: left-padded prompts, finished rows dropped, stopping at EOS and
at stop strings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from soulcli.data.encode import check_special_tokens, eval_mode, pad_id, pad_prompts, prompt_ids
from soulcli.eval.scoring import Pair, Progress, batches, forward_for, length_order, model_device


@dataclass(frozen=True)
class Generation:
    """One greedy generation: the prompt (a pair whose continuation is the reference, so the
    prompt's tokens are exactly those before the first answer token in training; without a
    reference, an empty continuation after :func:`~soulcli.data.encode.unreferenced_prompt`), its token budget and its stop strings."""

    prompt: Pair
    max_new_tokens: int
    stops: tuple[str, ...] = ()


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """The text before the earliest stop string (all of it if none occurs)."""
    end = len(text)
    for stop in stop_strings:
        at = text.find(stop)
        if stop and at != -1:
            end = min(end, at)
    return text[:end]


@torch.inference_mode()
def generate_texts(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[Pair],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    stop_strings: Sequence[str] = (),
    progress: Progress | None = None,
) -> list[str]:
    """Greedy continuation of each prompt, in the order given.

    Each prompt is the tokens of ``prefix + continuation`` before the first continuation token
    (:func:`~soulcli.data.encode.prompt_ids`): what the model saw before an answer in training.
    Prompts are sorted by length and left-padded (positions counted from each row's first real
    token, as Hugging Face's ``generate`` counts them), the batch goes through the model once,
    then one token a step from its KV cache. Each step takes the argmax of every row's last
    logits (plain greedy: no logits processor, whatever the model's generation config says,
    ties to the lowest id as ``generate``'s greedy search); a row is finished at EOS or once
    its text contains a stop string, and is then dropped from the batch and its cache, so the
    remaining rows alone go on, up to ``max_new_tokens`` tokens. Only the last position's
    hidden state goes through the output layer (the split scoring uses,
    :func:`~soulcli.eval.scoring.forward_for`). The returned text is cut before the first stop
    string and stripped of surrounding whitespace; the tokens are those of ``generate``'s
    greedy search (``tests/eval/test_eval_generation.py`` checks that on nine architectures).
    """
    check_special_tokens(tokenizer)
    if not prompts or max_new_tokens < 1:
        return [""] * len(prompts)
    texts = list(prompts)
    prompts = [prompt_ids(tokenizer, p.prefix, p.continuation, p.specials) for p in texts]
    order = length_order([len(p) for p in prompts])
    stops = [s for s in stop_strings if s]
    pad, eos = pad_id(tokenizer), tokenizer.eos_token_id
    device = model_device(model)
    answers: list[str] = [""] * len(texts)
    with eval_mode(model):
        probe = pad_prompts([prompts[order[-1]]], pad)
        forward, _ = forward_for(model, {k: v.to(device) for k, v in probe.items()})
        head = forward.head or (lambda states: states)
        for chunk in batches(order, batch_size, "generating", progress):
            batch = pad_prompts([prompts[i] for i in chunk], pad)
            mask = batch["attention_mask"].to(device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            states, cache = forward(batch["input_ids"].to(device), mask, positions, keep_cache=True, last_only=True)
            logits = head(states[:, -1])
            rows, last = list(chunk), positions[:, -1]
            new: dict[int, list[int]] = {i: [] for i in chunk}
            for step in range(max_new_tokens):
                token = logits.argmax(-1)
                going = []
                for r, (i, t) in enumerate(zip(rows, token.tolist())):
                    if t == eos:
                        continue
                    new[i].append(t)
                    if stops and any(s in tokenizer.decode(new[i], skip_special_tokens=True) for s in stops):
                        continue
                    going.append(r)
                if not going or step == max_new_tokens - 1:
                    break
                if len(going) < len(rows):  # drop the finished rows and their cache
                    keep = torch.tensor(going, device=device)
                    cache.reorder_cache(keep)
                    mask, last, token = mask[keep], last[keep], token[keep]
                    rows = [rows[r] for r in going]
                mask = torch.cat([mask, mask.new_ones(len(rows), 1)], 1)
                last = last + 1
                states, cache = forward(token[:, None], mask, last[:, None], cache, keep_cache=True, last_only=True)
                logits = head(states[:, -1])
            for i in chunk:
                answers[i] = cut_at_stop(tokenizer.decode(new[i], skip_special_tokens=True), stops).strip()
    return answers
