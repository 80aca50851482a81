"""``ga``: gradient ascent on the forget set."""

from __future__ import annotations

from soulcli.objectives.base import Forward, Objective, Terms, UnlearnBatch, forget_nll


class GradientAscent(Objective):
    """Gradient ascent (Jang et al. 2023, "Knowledge Unlearning for Mitigating Privacy Risks in
    Language Models", arXiv:2210.01504: maximise the language-model loss on the sequences to
    forget; TOFU's ``grad_ascent`` baseline, Maini et al. 2024, arXiv:2401.06121):

        L = -gamma * NLL(forget)

    with NLL the mean cross-entropy over the forget batch's answer tokens. No retain term, so
    nothing bounds the ascent: the loss is unbounded below and the model eventually collapses.
    """

    name = "ga"
    uses_retain = False

    def forget_term(self, fwd: Forward, batch: UnlearnBatch) -> Terms:
        return -forget_nll(fwd, batch.forget), {}
