"""Answer-token log-likelihoods and KL divergences, in fp32, shared by every objective.

Batches follow ``soulcli.data.encode``: unshifted labels, ``-100`` outside answers, so the logits
at position ``t`` score the label at ``t + 1``. "Answer positions" below are the positions whose
logits predict an answer token (the last prompt token through the token before the final EOS),
``soulcli.data.encode.answer_mask``.
"""

from __future__ import annotations

import torch

from soulcli.data.encode import answer_logprobs, answer_mask, pick_answer_logits


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``S = log pi(y|x)``, the summed answer log-likelihood of each sequence, ``[B]``."""
    return answer_logprobs(logits, labels)[0].sum(-1)


def answer_lengths(labels: torch.Tensor) -> torch.Tensor:
    """Number of answer tokens (EOS included) of each sequence, ``[B]``, at least 1."""
    return answer_mask(labels).sum(-1).clamp_min(1)


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
    lp = torch.log_softmax(pick_answer_logits(logits, labels), dim=-1)
    counts = answer_mask(labels).sum(-1).tolist()
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
    x = pick_answer_logits(logits, labels)
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
