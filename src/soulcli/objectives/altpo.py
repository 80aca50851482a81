"""``altpo``: DPO preferring a plausible alternate answer over the true forget answer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from soulcli.objectives.base import Forward, Terms, UnlearnBatch
from soulcli.objectives.dpo import DPO


class AltPO(DPO):
    """Alternate Preference Optimization (Mekala et al. 2024, "Alternate Preference Optimization
    for Unlearning Factual Knowledge in Large Language Models", arXiv:2409.13474, COLING 2025,
    the AltPO loss; open-unlearning runs it as its ``DPO`` trainer on alternate answers,
    ``community/methods/AltPO`` and ``compute_dpo_loss`` in ``src/trainer/utils.py``):

        L_forget = -(2/beta) * mean_i log sigmoid(beta * [(S_theta(y~_i) - S_ref(y~_i))
                                                         - (S_theta(y_i) - S_ref(y_i))])

    with ``y~`` an alternate answer to the forget question (positive feedback in the domain of
    the forget set) and ``y`` the true answer; ``S`` the summed answer log-likelihood, both
    ``S_ref`` cached once by ``setup``. The ``2/beta`` factor (the authors' and
    open-unlearning's scaling, which ``dpo`` lacks) keeps the gradient's size independent of
    ``beta``. Default ``beta = 0.1`` (open-unlearning's; its AltPO search spans 0.05 to 0.5).
    The total adds ``alpha * R(retain)``.

    Where the alternates come from: the paper samples several alternates per question from
    the model itself, prompted to change the answer's facts. soulcli does not generate them;
    each forget item gets one of the ``perturbed_answer`` entries of its row in the forget
    split's ``_perturbed`` file (TOFU's plausible answers with the facts changed), picked per
    item by ``pick_refusal``'s deterministic rule and supplied as ``batch.forget_alternate``.
    Those same perturbed answers are what TOFU's truth ratio (and so forget quality) scores
    against the paraphrased answer, so training towards them favours that metric: compare
    AltPO's forget quality with that in mind.
    """

    name = "altpo"
    uses_refusal = False
    uses_alternate = True
    preferred = ("forget_alternate", "alternate_logp")

    def forget_term(self, fwd: Forward, batch: UnlearnBatch) -> Terms:
        margin = self.margin(fwd, batch)
        loss = -(2.0 / self.beta) * F.logsigmoid(margin).mean()
        return loss, {"reward_margin": float(margin.detach().mean())}
