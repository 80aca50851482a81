"""Answer-token log-likelihoods and KL divergences, in fp32, shared by every objective.

Batches follow ``soulcli.data.encode``: unshifted labels, ``-100`` outside answers, so the logits
at position ``t`` score the label at ``t + 1``. "Answer positions" below are the positions whose
logits predict an answer token (the last prompt token through the token before the final EOS).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

from soulcli.data.encode import IGNORE_INDEX

Batch = dict[str, torch.Tensor]


# active taps: lists that every differentiable forward_logits call appends (data, logits) to
_TAPS: list[list[tuple[Batch, torch.Tensor]]] = []


@contextlib.contextmanager
def tap_logits() -> Iterator[list[tuple[Batch, torch.Tensor]]]:
    """Record ``(data, logits)`` of every forward_logits call made with grad enabled.

    The engine uses it to take the Gauss-Newton-Bartlett sample from the logits the objective
    already computed at the same parameters, instead of a second forward pass.
    """
    record: list[tuple[Batch, torch.Tensor]] = []
    _TAPS.append(record)
    try:
        yield record
    finally:
        _TAPS.remove(record)


def forward_logits(model: torch.nn.Module, data: Batch) -> torch.Tensor:
    """``[B, T, V]`` logits of a batch (only ``input_ids`` and ``attention_mask`` go to the model)."""
    logits = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    if _TAPS and torch.is_grad_enabled():
        for record in _TAPS:
            record.append((data, logits))
    return logits


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: positions whose logits predict an answer token (the last column is False)."""
    pos = torch.zeros_like(labels, dtype=torch.bool)
    pos[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return pos


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
    return -nll.view_as(target), target != IGNORE_INDEX


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``S = log pi(y|x)``, the summed answer log-likelihood of each sequence, ``[B]``."""
    return answer_logprobs(logits, labels)[0].sum(-1)


def answer_lengths(labels: torch.Tensor) -> torch.Tensor:
    """Number of answer tokens (EOS included) of each sequence, ``[B]``, at least 1."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(-1).clamp_min(1)


def mean_answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """NLL: the mean cross-entropy over all answer tokens of the batch (a scalar)."""
    logp, mask = answer_logprobs(logits, labels)
    return -logp.sum() / mask.sum().clamp_min(1)


def reference_distributions(
    logits: torch.Tensor, labels: torch.Tensor, top_k: int
) -> list[tuple[torch.Tensor, ...]]:
    """The next-token distributions at each sequence's answer positions, compactly, one per row.

    ``top_k == 0`` or ``top_k >= V``: ``(logp [n, V],)``, exact. Otherwise
    ``(logp_topk [n, k], ids [n, k], log_tail [n])`` where ``log_tail`` is the log of the mass
    outside the top k; ``kl_to_reference`` then computes the KL between the two distributions
    coarsened to k + 1 outcomes (the top-k tokens and "any other token").
    """
    pos = answer_positions(labels)
    lp = torch.log_softmax(logits[pos].float(), dim=-1)
    counts = pos.sum(-1).tolist()
    if top_k == 0 or top_k >= lp.shape[-1]:
        return [(part,) for part in lp.cpu().split(counts)]
    vals, ids = lp.topk(top_k, dim=-1)
    tail = lp.scatter(-1, ids, float("-inf")).logsumexp(-1)
    parts = (
        vals.cpu().split(counts),
        ids.to(torch.int32).cpu().split(counts),
        tail.cpu().split(counts),
    )
    return list(zip(*parts))


def kl_to_reference(
    logits: torch.Tensor, labels: torch.Tensor, reference: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """``KL(p_ref || p_theta)`` at every answer position of the batch, ``[N]`` (row-major order).

    ``reference`` is the row-wise concatenation of ``reference_distributions`` for this batch.
    With the top-k form this is the exact KL of the coarsened distributions: never above the
    full KL (data-processing inequality), zero when the model equals the reference, and equal to
    the full KL when the reference puts all its mass on its top k tokens.
    """
    x = logits[answer_positions(labels)].float()
    lse = x.logsumexp(-1, keepdim=True)
    ref_lp = reference[0].to(x.device)
    if ref_lp.shape[0] != x.shape[0]:
        raise RuntimeError(
            f"the cached reference has {ref_lp.shape[0]} answer positions, the batch {x.shape[0]}"
        )
    if len(reference) == 1:
        return (ref_lp.exp() * (ref_lp - (x - lse))).sum(-1)
    ids = reference[1].to(x.device, torch.long)
    ref_tail = reference[2].to(x.device)
    top = (ref_lp.exp() * (ref_lp - (x.gather(-1, ids) - lse))).sum(-1)
    q_tail = x.scatter(-1, ids, float("-inf")).logsumexp(-1) - lse.squeeze(-1)
    return top + ref_tail.exp() * (ref_tail - q_tail)
