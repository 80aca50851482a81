"""Batched greedy generation: left-padded prompts, stopping at EOS and at stop strings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import GenerationConfig

from soulcli.data.encode import check_special_tokens, eval_mode, pad_id, pad_prompts, prompt_ids
from soulcli.eval.scoring import Pair, Progress, batches, length_order, model_device


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


def _new_tokens(row: torch.Tensor, eos_id: int) -> list[int]:
    ids = row.tolist()
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


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
    Prompts are sorted by length and left-padded so every row's last prompt token sits at the
    end of the batch; a row is finished at EOS or once its text contains a stop string, and the
    batch ends when every row is finished or after ``max_new_tokens`` tokens. The returned text
    is cut before the first stop string and stripped of surrounding whitespace.
    """
    check_special_tokens(tokenizer)
    if not prompts:
        return []
    texts = list(prompts)
    prompts = [prompt_ids(tokenizer, p.prefix, p.continuation, p.specials) for p in texts]
    order = length_order([len(p) for p in prompts])
    stops = [s for s in stop_strings if s]
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        stop_strings=stops or None,
    )
    device = model_device(model)
    answers: list[str] = [""] * len(texts)
    with eval_mode(model):
        for chunk in batches(order, batch_size, "generating", progress):
            batch = pad_prompts([prompts[i] for i in chunk], pad_id(tokenizer))
            # Greedy whatever the model's own generation defaults say (do_sample=False wins).
            out = model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                generation_config=config,
                tokenizer=tokenizer if stops else None,
            )
            width = batch["input_ids"].shape[1]
            for i, row in zip(chunk, out[:, width:]):
                text = tokenizer.decode(
                    _new_tokens(row, tokenizer.eos_token_id), skip_special_tokens=True
                )
                answers[i] = cut_at_stop(text, stops).strip()
    return answers
