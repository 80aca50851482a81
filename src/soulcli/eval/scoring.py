"""Batched teacher-forced scoring: one forward pass per (prefix, continuation) pair, kept per token.

Every log-probability metric (probability, truth ratio, the membership attacks, extraction
strength, exact memorisation) is a function of what one teacher-forced pass over
``prefix + continuation [+ EOS]`` (a question's prompt and an answer candidate, a prompt and
its continuation, a raw text) yields at each continuation token:

* the log-probability of the answer token (fp32, via ``F.cross_entropy``),
* whether it is the argmax of the next-token distribution,
* optionally the mean and standard deviation of ``log p(z)`` under that distribution (Min-K%++).

:func:`score_pairs` computes these once per distinct pair, sorted by length so batches carry
little padding, and hands them back in the caller's order; within a batch the answer positions
go through :func:`position_scores` in chunks, so memory beyond the model's logits stays one
chunk's whatever the vocabulary.
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
    eos: bool = False  # the last token is the closing EOS (not cut off by max_length)
    truncated: bool = False  # the sequence was cut to max_length

    @property
    def nll(self) -> float:
        """Mean answer-token negative log-likelihood (TOFU's per-item loss, EOS included)."""
        return float(-self.logprobs.mean())

    @property
    def content(self) -> slice:
        """The continuation's own tokens: all but an appended EOS. open-unlearning's Min-K%,
        Min-K%++, exact memorisation and extraction strength leave the EOS prediction out
        (``tokenwise_logprobs`` / ``tokenwise_vocab_logprobs`` in its
        ``src/evals/metrics/utils.py`` drop the last label); a continuation that is nothing but
        its EOS keeps it, so every item has a value."""
        n = len(self.logprobs)
        return slice(0, n - 1 if self.eos and n > 1 else n)

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


# Variance below this is treated as this (a near one-hot distribution); keeps z finite. The
# floor open-unlearning's Min-K%++ (src/evals/metrics/mia/min_k_plus_plus.py) clamps it to.
_MIN_VARIANCE = 1e-6
# Answer positions per chunk: about this many logits (x 8 bytes for the float64 statistics), so
# a chunk's temporaries stay near 32 MB whatever the vocabulary.
CHUNK_ELEMENTS = 1 << 22


def _distribution_stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of ``log p(z)`` for ``z ~ p = softmax(logits)``, rows of ``[N, V]``, in
    float64 (Zhang et al., 2024, Min-K%++ eq. 2: ``mu = E_z log p(z)``, ``sigma^2 = E_z (log
    p(z) - mu)^2``), the variance at least :data:`_MIN_VARIANCE`."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    p = logp.exp()
    mu = (p * logp).sum(-1)
    var = (p * (logp - mu.unsqueeze(-1)).square()).sum(-1)
    return mu, var.clamp_min(_MIN_VARIANCE).sqrt()


def position_scores(
    logits: torch.Tensor, labels: torch.Tensor, stats: torch.Tensor,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Log-probability (fp32, ``F.cross_entropy``), argmax hit and, for rows whose ``stats``
    flag is set, Min-K%++'s ``mu``/``sigma`` of every answer position of ``[B, T, V]`` logits,
    flattened row-major as ``labels[:, 1:][answer_mask(labels)]``.

    Positions go through in chunks of about ``chunk_elements`` logits, so no full-vocabulary
    temporary (a log-softmax, a float64 copy) is ever larger than one chunk: at a 128k
    vocabulary a batch's answer logits in float64 would be gigabytes. Each position's numbers
    are computed from its own row exactly as in one pass, so chunking changes no value.
    ``mu``/``sigma`` are 0 / 1 on rows without the flag (and ``None`` if no row has it).
    """
    rows, cols = answer_mask(labels).nonzero(as_tuple=True)
    targets = labels[rows, cols + 1]
    per_position = stats[rows]
    want_stats = bool(per_position.any())
    n, vocab = len(rows), logits.shape[-1]
    logprobs = torch.empty(n, dtype=torch.float32, device=logits.device)
    hits = torch.empty(n, dtype=torch.bool, device=logits.device)
    mu = torch.zeros(n, dtype=torch.float64, device=logits.device) if want_stats else None
    sigma = torch.ones(n, dtype=torch.float64, device=logits.device) if want_stats else None
    step = max(1, chunk_elements // vocab)
    for start in range(0, n, step):
        sl = slice(start, start + step)
        picked = logits[rows[sl], cols[sl]]
        picked = picked.to(torch.promote_types(picked.dtype, torch.float32))
        logprobs[sl] = -F.cross_entropy(picked, targets[sl], reduction="none")
        hits[sl] = picked.argmax(-1) == targets[sl]
        keep = per_position[sl]
        if want_stats and bool(keep.any()):
            where = torch.arange(start, start + len(keep), device=logits.device)[keep]
            mu[where], sigma[where] = _distribution_stats(picked[keep])
    return logprobs, hits, mu, sigma


@torch.inference_mode()
def _score_batch(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], with_stats: Sequence[bool],
) -> list[TokenScores]:
    device = model_device(model)
    logits = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        use_cache=False,
    ).logits
    labels = batch["labels"].to(device)
    flags = torch.tensor(list(with_stats), device=device)
    logprobs, hits, mu, sigma = position_scores(logits, labels, flags, CHUNK_ELEMENTS)
    del logits
    counts = answer_mask(labels).sum(-1).tolist()
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
                cut = items[i].truncated  # a cut sequence lost its EOS with its end
                results[i] = replace(scores, eos=pairs[i].eos and not cut, truncated=cut)
    return results  # type: ignore[return-value]
