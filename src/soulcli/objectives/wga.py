"""``wga``: gradient ascent with each answer token weighted by its own likelihood."""

from __future__ import annotations

from typing import Annotated, Callable

import torch

from soulcli.data.encode import answer_logprobs
from soulcli.objectives.base import Forward, Objective, Terms, UnlearnBatch
from soulcli.objectives.reference import Batch
from soulcli.schema import POSITIVE

# p (detached token likelihoods, [N]) -> token weights, [N]
TokenWeight = Callable[[torch.Tensor], torch.Tensor]


def weighted_ascent(fwd: Forward, data: Batch, weight: TokenWeight) -> Terms:
    """``mean_t w(p_t) * log p_t`` over the batch's answer tokens, ``w`` computed on detached
    likelihoods (so it only rescales each token's gradient ascent step); logs ``token_weight``,
    the mean weight."""
    logp, mask = answer_logprobs(fwd.logits(data), data["labels"])
    logp = logp[mask]
    w = weight(logp.detach().exp())
    return (w * logp).mean(), {"token_weight": float(w.mean())}


class WGA(Objective):
    """Weighted Gradient Ascent (Wang et al. 2025, "Rethinking LLM Unlearning Objectives: A
    Gradient Perspective and Go Beyond", arXiv:2502.19301, ICLR 2025, the WGA objective;
    open-unlearning ``src/trainer/unlearn/wga.py``):

        L_forget = mean_t  sg(p_t)^beta * log p_t

    over the forget batch's answer tokens (EOS included), ``p_t = pi(y_t | x, y_<t)`` and ``sg``
    stop-gradient. Gradient ascent scales every token's step by ``1/p_t`` relative to the
    likelihood; the weight ``p_t^beta`` undoes that for tokens already unlikely, so ascent stops
    pulling where the answer is forgotten. ``beta = 0`` would be plain gradient ascent (hence
    ``beta > 0``). Default ``beta = 1`` (the paper's and open-unlearning's). The total adds
    ``alpha * R(retain)``; logs ``token_weight``, the mean ``p_t^beta``.
    """

    name = "wga"
    beta: Annotated[float, POSITIVE, "exponent beta of the token weight p^beta (the paper's 1.0)"] = 1.0

    def forget_term(self, fwd: Forward, batch: UnlearnBatch) -> Terms:
        return weighted_ascent(fwd, batch.forget, lambda p: p.pow(self.beta))
