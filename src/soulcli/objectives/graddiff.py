"""``graddiff``: gradient ascent on the forget set, descent on the retain set."""

from __future__ import annotations

from soulcli.objectives.ga import GradientAscent


class GradDiff(GradientAscent):
    """Gradient difference (Liu et al. 2022, "Continual Learning and Private Unlearning",
    arXiv:2203.12817; TOFU's ``grad_diff`` baseline, Maini et al. 2024, arXiv:2401.06121):

        L = -gamma * NLL(forget) + alpha * R(retain)

    with R the retain term chosen by ``unlearn.retain_loss``: the retain NLL, or the KL to the
    starting model's next-token distributions (see ``soulcli.objectives.base``).
    """

    name = "graddiff"
    uses_retain = True
