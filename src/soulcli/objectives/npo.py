"""``npo``: negative preference optimisation against the starting model."""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F

from soulcli.objectives.base import Forward, Objective, ReferenceFn, Terms, UnlearnBatch, reference_logprobs
from soulcli.objectives.logprobs import sequence_logprob
from soulcli.schema import POSITIVE


class NPO(Objective):
    """Negative Preference Optimization (Zhang et al. 2024, "Negative Preference Optimization:
    From Catastrophic Collapse to Effective Unlearning", arXiv:2404.05868, the NPO loss and its
    gradient):

        L_NPO = -(2/beta) * mean_i log sigmoid(-beta * (S_theta(i) - S_ref(i)))

    where ``S = log pi(y|x)`` is the summed log-likelihood of the forget answer (EOS included)
    and ``S_ref`` that of the starting model, cached once by ``setup`` (4 bytes an item). Its
    gradient is gradient ascent's, reweighted per sequence:

        grad L_NPO = mean_i W_i * grad S_theta(i),  W_i = 2 pi_theta^beta / (pi_theta^beta + pi_ref^beta)
                                                       = 2 sigmoid(beta * (S_theta(i) - S_ref(i)))

    so sequences already forgotten (``pi_theta << pi_ref``) stop pulling. ``W`` starts at 1 and
    is logged as ``npo_weight``. The total adds ``alpha * R(retain)`` (NPO+RT in the paper).
    """

    name = "npo"
    sequence_mean = True
    needs_setup = True
    beta: Annotated[float, POSITIVE, "inverse temperature beta (the paper's default 0.1)"] = 0.1

    def reference_tables(self) -> dict[str, tuple[str, ReferenceFn]]:
        return {**super().reference_tables(), "forget_logp": ("forget", reference_logprobs)}

    def forget_term(self, fwd: Forward, batch: UnlearnBatch) -> Terms:
        data = batch.forget
        s = sequence_logprob(fwd.logits(data), data["labels"])
        log_ratio = s - self._reference_rows("forget_logp", data, s.device)
        loss = -(2.0 / self.beta) * F.logsigmoid(-self.beta * log_ratio).mean()
        weight = 2.0 * torch.sigmoid(self.beta * log_ratio.detach())
        extras: dict[str, Any] = {
            "npo_weight": float(weight.mean()),
            "log_ratio": float(log_ratio.detach().mean()),
        }
        return loss, extras
