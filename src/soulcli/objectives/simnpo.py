"""``simnpo``: NPO without a reference model, on length-normalised likelihoods."""

from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F

from soulcli.objectives.base import Forward, Objective, Terms, UnlearnBatch
from soulcli.objectives.logprobs import answer_lengths, sequence_logprob
from soulcli.schema import POSITIVE


class SimNPO(Objective):
    """Simple NPO (Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference
    Optimization for LLM Unlearning", arXiv:2410.07163, the SimNPO loss):

        L = -(2/beta) * mean_i log sigmoid(-beta * (S_theta(i) / |y_i| - delta))

    with ``S`` the summed answer log-likelihood and ``|y|`` the answer length in tokens (EOS
    included). No reference model: the reward is length-normalised instead. The paper writes
    the margin as ``-gamma`` outside the product: ``delta = -gamma / beta``, so ``delta = 0``
    is its default ``gamma = 0``. The total adds ``alpha * R(retain)``.
    """

    name = "simnpo"
    sequence_mean = True
    beta: Annotated[float, POSITIVE, "inverse temperature beta (2.5 as in the paper's TOFU runs)"] = 2.5
    delta: Annotated[float, "reward margin delta on the mean answer log-likelihood"] = 0.0

    def forget_term(self, fwd: Forward, batch: UnlearnBatch) -> Terms:
        data = batch.forget
        mean_logp = sequence_logprob(fwd.logits(data), data["labels"]) / answer_lengths(
            data["labels"]
        )
        loss = -(2.0 / self.beta) * F.logsigmoid(-self.beta * (mean_logp - self.delta)).mean()
        return loss, {"mean_logp": float(mean_logp.detach().mean())}
