"""``ceu``: cross-entropy towards the model's own distribution with the true token removed."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from typing import Annotated

from soulcli.data.encode import answer_mask
from soulcli.objectives.base import Batch, Forward, Objective, Terms, UnlearnBatch, answer_count
from soulcli.schema import NON_NEGATIVE


class CEU(Objective):
    """Cross Entropy Unlearning (Yang et al. 2025, "CE-U: Cross Entropy Unlearning",
    arXiv:2503.01224, the CE-U loss; open-unlearning ``src/trainer/unlearn/ceu.py``):

        L_forget = mean_t  CE(q_t, p_t),   q_t = softmax(sg(z_t) with z_t[y_t] = -inf)

    at the forget batch's answer positions ``t`` (``z_t`` the logits predicting answer token
    ``y_t``, ``p_t = softmax(z_t)``). The target is the model's own current distribution with the
    true token's probability moved onto the others, so the gradient on the logits is
    ``p_t - q_t``: the true token's logit goes down, the others up in proportion to their
    probability, and the gradient vanishes as ``p_t[y_t] -> 0`` (no unbounded ascent). No
    reference model. The first ``ignore_first_n_answer_tokens`` answer tokens of each sequence
    are left out (default 1, the paper's footnote in its training settings and
    open-unlearning's default). open-unlearning applies no retain term (``unlearn.retain_weight
    = 0`` matches it); here the recipe's retain term is added.
    """

    name = "ceu"
    ignore_first_n_answer_tokens: Annotated[
        int, NON_NEGATIVE, "answer tokens at the start of each answer left out of the loss"] = 1

    def positions(self, data: Batch) -> torch.Tensor:
        """``[B, T-1]`` bool: the answer positions in the loss (the first ones left out)."""
        pos = answer_mask(data["labels"])
        return pos & (pos.cumsum(-1) > self.ignore_first_n_answer_tokens)

    def counts(self, batch: UnlearnBatch) -> tuple[int, int]:
        return int(self.positions(batch.forget).sum()), answer_count(batch.retain)

    def forget_term(self, fwd: Forward, batch: UnlearnBatch) -> Terms:
        data = batch.forget
        pos = self.positions(data)
        z = fwd.logits(data)[:, :-1][pos].float()
        true = data["labels"][:, 1:][pos]
        target = F.softmax(z.detach().scatter(-1, true.unsqueeze(-1), float("-inf")), dim=-1)
        ce = -(target * F.log_softmax(z, dim=-1)).sum(-1)
        p_true = F.softmax(z.detach(), dim=-1).gather(-1, true.unsqueeze(-1))
        n = max(ce.numel(), 1)
        return ce.sum() / n, {"true_token_prob": float(p_true.sum() / n)}
