"""Batched teacher-forced scoring: one forward pass per (prefix, continuation) pair, kept per token.

Every log-probability metric (probability, truth ratio, the membership attacks, extraction
strength, exact memorisation) is a function of what one teacher-forced pass over
``prefix + continuation [+ EOS]`` (a question's prompt and an answer candidate, a prompt and
its continuation, a raw text) yields at each continuation token:

* the log-probability of the answer token (fp32, via ``F.cross_entropy``),
* whether it is the argmax of the next-token distribution,
* optionally the mean and standard deviation of ``log p(z)`` under that distribution (Min-K%++).

:func:`score_pairs` computes these once per distinct pair, sorted by length so batches carry
little padding, and hands them back in the caller's order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from soulcli.data.encode import (
    answer_mask,
    check_special_tokens,
    encode_pair,
    eval_mode,
    pad_batch,
    pad_id,
    pick_answer_logits,
)

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Pair:
    """One teacher-forced sequence: ``prefix`` conditions, ``continuation`` is scored token by
    token; ``eos`` appends the tokenizer's EOS to the continuation (an answer's end, scored);
    ``specials``: a template's strings, where special-token text is a special token."""

    prefix: str
    continuation: str
    eos: bool = True
    specials: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenScores:
    """Per-continuation-token results of one teacher-forced pass (including the EOS, if any)."""

    logprobs: np.ndarray  # float64 [n]: log p(y_t | question, y_<t)
    hits: np.ndarray  # bool [n]: argmax of the next-token distribution == y_t
    mu: np.ndarray | None = None  # float64 [n]: E_z[log p(z)]
    sigma: np.ndarray | None = None  # float64 [n]: std_z[log p(z)]
    truncated: bool = False  # the sequence was cut to max_length

    @property
    def nll(self) -> float:
        """Mean answer-token negative log-likelihood (TOFU's per-item loss)."""
        return float(-self.logprobs.mean())


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices sorted longest first (stable), so batches hold similar lengths and the largest
    batch, the one that would run out of memory, comes first."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def batches(
    order: list[int], batch_size: int, stage: str, progress: Progress | None
) -> Iterator[list[int]]:
    """Consecutive chunks of ``order``; reports ``(stage, 0, n)`` first, then each chunk done."""
    if progress is not None:
        progress(stage, 0, len(order))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        yield chunk
        if progress is not None:
            progress(stage, start + len(chunk), len(order))


# Variance below this is treated as this (a near one-hot distribution); keeps z finite.
_MIN_VARIANCE = 1e-12


def _distribution_stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of ``log p(z)`` for ``z ~ p = softmax(logits)``, rows of ``[N, V]``."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    p = logp.exp()
    mu = (p * logp).sum(-1)
    var = (p * (logp - mu.unsqueeze(-1)).square()).sum(-1)
    return mu, var.clamp_min(_MIN_VARIANCE).sqrt()


@torch.inference_mode()
def _score_batch(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], with_stats: Sequence[bool]
) -> list[TokenScores]:
    device = model_device(model)
    logits = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        use_cache=False,
    ).logits
    labels = batch["labels"].to(device)
    mask = answer_mask(labels)
    picked = pick_answer_logits(logits, labels)  # [N, V]: only answer positions, row-major
    flat_target = labels[:, 1:][mask]
    logprobs = -F.cross_entropy(picked, flat_target, reduction="none")
    hits = picked.argmax(-1) == flat_target
    counts = mask.sum(-1).tolist()
    row_of = torch.repeat_interleave(torch.arange(len(counts), device=device), mask.sum(-1))
    stat_rows = torch.tensor(list(with_stats), device=device)[row_of]
    mu = sigma = None
    if bool(stat_rows.any()):
        mu = torch.zeros_like(logprobs, dtype=torch.float64)
        sigma = torch.ones_like(logprobs, dtype=torch.float64)
        mu[stat_rows], sigma[stat_rows] = _distribution_stats(picked[stat_rows])
    logprobs_np = logprobs.double().cpu().numpy()
    hits_np = hits.cpu().numpy()
    mu_np = mu.cpu().numpy() if mu is not None else None
    sigma_np = sigma.cpu().numpy() if sigma is not None else None
    out: list[TokenScores] = []
    start = 0
    for row, n in enumerate(counts):
        sl = slice(start, start + n)
        start += n
        keep = with_stats[row]
        out.append(
            TokenScores(
                logprobs=logprobs_np[sl],
                hits=hits_np[sl],
                mu=mu_np[sl] if keep else None,
                sigma=sigma_np[sl] if keep else None,
            )
        )
    return out


def score_pairs(
    model: torch.nn.Module,
    tokenizer,
    pairs: Sequence[Pair],
    *,
    batch_size: int = 32,
    max_length: int = 512,
    with_stats: Sequence[bool] | None = None,
    progress: Progress | None = None,
) -> list[TokenScores]:
    """Score each pair in batches of ``batch_size``, right-padded.

    ``with_stats[i]`` asks for the Min-K%++ distribution statistics of pair ``i`` (they cost a
    full-vocabulary softmax in float64, so only the pairs that need them pay). Results come back
    in the order of ``pairs``; duplicates are the caller's business (see ``evaluate``).
    """
    check_special_tokens(tokenizer)
    if not pairs:
        return []
    flags = list(with_stats) if with_stats is not None else [False] * len(pairs)
    items = [encode_pair(tokenizer, p.prefix, p.continuation, max_length, p.eos, p.specials) for p in pairs]
    order = length_order([len(it.input_ids) for it in items])
    results: list[TokenScores | None] = [None] * len(pairs)
    with eval_mode(model):
        for chunk in batches(order, batch_size, "scoring", progress):
            batch = pad_batch([items[i] for i in chunk], pad_id(tokenizer), "right")
            for i, scores in zip(chunk, _score_batch(model, batch, [flags[i] for i in chunk])):
                results[i] = replace(scores, truncated=items[i].truncated)
    return results  # type: ignore[return-value]
