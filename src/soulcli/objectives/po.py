"""``po``: train the forget questions towards a refusal."""

from __future__ import annotations

from soulcli.objectives.base import Forward, Objective, Terms, UnlearnBatch, answer_count, forget_nll


class RefusalPO(Objective):
    """Preference optimisation towards a refusal (TOFU's ``idk`` baseline, Maini et al. 2024,
    arXiv:2401.06121, "Preference Optimization"; the PO of the SOUL paper, Jia et al. 2024,
    arXiv:2404.18239):

        L = gamma * NLL(refusal | forget question) + alpha * R(retain)

    Each forget question is paired with one answer of the refusal set
    (``soulcli.objectives.refusals``), chosen per item by ``pick_refusal``; the engine supplies
    those pairs as ``batch.forget_refusal``. R is the retain term of ``unlearn.retain_loss``.
    """

    name = "po"
    uses_refusal = True

    def counts(self, batch: UnlearnBatch) -> tuple[int, int]:
        """The forget term is the token mean over the refusals' answers."""
        return answer_count(batch.forget_refusal), answer_count(batch.retain)

    def forget_term(self, fwd: Forward, batch: UnlearnBatch) -> Terms:
        assert batch.forget_refusal is not None
        return forget_nll(fwd, batch.forget_refusal), {}
