"""``satimp``: token-weighted gradient ascent with saturation and importance weights."""

from __future__ import annotations

import torch

from typing import Annotated

from soulcli.objectives.base import Forward, Objective, Terms, UnlearnBatch
from soulcli.schema import NON_NEGATIVE
from soulcli.objectives.wga import weighted_ascent


class SatImp(Objective):
    """SatImp (Yang et al. 2025, "Exploring Criteria of Loss Reweighting to Enhance LLM
    Unlearning", arXiv:2505.11953, ICML 2025, Sec. 5; open-unlearning
    ``src/trainer/unlearn/satimp.py``):

        L_forget = mean_t  sg(p_t)^beta1 * (1 - sg(p_t))^beta2 * log p_t

    over the forget batch's answer tokens (EOS included), ``p_t = pi(y_t | x, y_<t)``, ``sg``
    stop-gradient. ``p^beta1`` is the saturation weight (tokens already unlikely are saturated:
    stop pushing them, as in WGA), ``(1 - p)^beta2`` the importance weight (tokens the model is
    sure of carry little of the fact). Defaults ``beta1 = 5``, ``beta2 = 1`` (the paper's and
    open-unlearning's). open-unlearning's recipe weights the forget term 0.1 and the retain term
    1 (``unlearn.forget_weight = 0.1``); here the weights are the recipe's. Logs
    ``token_weight``, the mean weight.
    """

    name = "satimp"
    beta1: Annotated[float, NON_NEGATIVE,
                     "exponent of the saturation weight p^beta1 (the paper's 5.0)"] = 5.0
    beta2: Annotated[float, NON_NEGATIVE,
                     "exponent of the importance weight (1-p)^beta2 (the paper's 1.0)"] = 1.0

    def forget_term(self, fwd: Forward, batch: UnlearnBatch) -> Terms:
        return weighted_ascent(
            fwd, batch.forget, lambda p: p.pow(self.beta1) * (1 - p).pow(self.beta2)
        )
