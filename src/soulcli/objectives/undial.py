"""``undial``: distil the starting model with the true token's logit lowered."""

from __future__ import annotations

from typing import Annotated, Any

import torch

from soulcli.data.encode import answer_mask, forward_logits
from soulcli.objectives.base import Forward, Objective, ReferenceFn, Terms, UnlearnBatch
from soulcli.objectives.logprobs import kl_to_reference, reference_distributions
from soulcli.objectives.reference import Batch
from soulcli.schema import POSITIVE


class UNDIAL(Objective):
    """UNDIAL, unlearning by self-distillation on adjusted logits (Dong et al. 2024, "UNDIAL:
    Self-Distillation with Adjusted Logits for Robust Unlearning in Large Language Models",
    arXiv:2402.10052, NAACL 2025, the adjusted-logit target and its distillation loss;
    open-unlearning ``src/trainer/unlearn/undial.py`` and ``compute_undial_loss``):

        q_t      = softmax(z_ref,t - beta * onehot(y_t))
        L_forget = mean_t KL(q_t || p_theta,t)

    at the forget batch's answer positions ``t``, ``z_ref,t`` the starting model's logits
    predicting answer token ``y_t``. The target is the starting model itself with only the true
    token made ``e^beta`` times less likely, so the student unlearns the answer without the
    unbounded ascent of GA. ``q`` is fixed: ``setup`` caches it once per forget item, as the top
    ``kl_top_k`` log-probabilities plus the remaining mass (``kl_top_k = 0``: the full
    distribution, exact; see ``logprobs.kl_to_reference``), so ``kl_top_k`` also sets this
    cache. Default ``beta = 10`` (open-unlearning's recipe; the README suggests 3 to 30).

    Deliberate differences: the paper and open-unlearning minimise the cross-entropy
    ``CE(q, p_theta) = KL(q || p_theta) + H(q)``; ``H(q)`` is a constant of the cache, so the
    KL has the same gradient and reads 0 at a perfect fit. open-unlearning averages over every
    position of the sequence, prompt and padding included; here only answer positions count,
    as in every soulcli loss. The paper uses no retain set (open-unlearning's ``alpha = 0``:
    set ``unlearn.retain_weight = 0``); otherwise the recipe's retain term is added.
    """

    name = "undial"
    needs_setup = True
    beta: Annotated[float, POSITIVE, "how far the true token's logit is lowered in the target"] = 10.0

    def reference_tables(self) -> dict[str, tuple[str, ReferenceFn]]:
        return {**super().reference_tables(), "forget_target": ("forget", self._targets)}

    def cache_meta(self) -> dict[str, Any]:
        return {**super().cache_meta(), "beta": self.beta}

    def forget_term(self, fwd: Forward, batch: UnlearnBatch) -> Terms:
        data = batch.forget
        target = self._reference_distributions("forget_target", data)
        return kl_to_reference(fwd.logits(data), data["labels"], target).mean(), {}

    def _targets(self, model: torch.nn.Module, data: Batch) -> list[Any]:
        labels = data["labels"]
        logits = forward_logits(model, data).float()
        lowered = torch.zeros_like(logits)
        lowered[:, :-1].scatter_(-1, labels[:, 1:].clamp_min(0).unsqueeze(-1), self.beta)
        lowered[:, :-1] *= answer_mask(labels).unsqueeze(-1)  # only where y_t is an answer token
        return reference_distributions(logits - lowered, labels, self.kl_top_k)
