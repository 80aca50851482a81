"""``kl``: gradient ascent on the forget set, KL to the starting model on the retain set."""

from __future__ import annotations

from soulcli.objectives.graddiff import GradDiff


class KLMinimization(GradDiff):
    """TOFU's KL minimisation (Maini et al. 2024, arXiv:2401.06121, "KL Minimization"):

        L = -gamma * NLL(forget) + alpha * mean_{t in retain answers} KL(p_ref(.|t) || p_theta(.|t))

    The KL is a true divergence between next-token distributions (not a cross-entropy against
    the reference's argmax), averaged over retain answer positions only: prompts and padding do
    not count. ``p_ref`` is the starting model, cached by ``setup`` (top ``kl_top_k`` tokens per
    position plus the remaining mass; ``kl_top_k = 0`` keeps the full distribution). The retain
    term is always this KL: ``unlearn.retain_loss`` has no effect here.
    """

    name = "kl"
    retain_kind = "kl"
