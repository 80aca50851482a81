"""``dpo`` / ``idkdpo``: DPO preferring a refusal over the true forget answer."""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F

from soulcli.objectives.base import Forward, Objective, ReferenceFn, Terms, UnlearnBatch, reference_logprobs
from soulcli.objectives.logprobs import sequence_logprob
from soulcli.schema import POSITIVE


class DPO(Objective):
    """Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290, eq. 7) with the
    refusal preferred (``y_w``) and the true forget answer rejected (``y_l``), as in the IdkDPO
    unlearning baseline of the NPO paper (Zhang et al. 2024, arXiv:2404.05868):

        L = -mean_i log sigmoid(beta * [(S_theta(y_w) - S_ref(y_w)) - (S_theta(y_l) - S_ref(y_l))])

    ``S`` is the summed answer log-likelihood; both ``S_ref`` come from the starting model, cached
    once by ``setup`` per forget item (8 bytes an item). The total adds ``alpha * R(retain)``.
    """

    name = "dpo"
    sequence_mean = True
    uses_refusal = True
    needs_setup = True
    beta: Annotated[float, POSITIVE, "inverse temperature beta (0.1 as in the paper)"] = 0.1
    # the UnlearnBatch field holding the preferred answers, and its reference table
    preferred: ClassVar[tuple[str, str]] = ("forget_refusal", "refusal_logp")

    def reference_tables(self) -> dict[str, tuple[str, ReferenceFn]]:
        field, table = self.preferred
        return {
            **super().reference_tables(),
            "forget_logp": ("forget", reference_logprobs),
            table: (field, reference_logprobs),
        }

    def forget_term(self, fwd: Forward, batch: UnlearnBatch) -> Terms:
        margin = self.margin(fwd, batch)
        return -F.logsigmoid(margin).mean(), {"reward_margin": float(margin.detach().mean())}

    def margin(self, fwd: Forward, batch: UnlearnBatch) -> torch.Tensor:
        """``beta * [(S_theta(y_w) - S_ref(y_w)) - (S_theta(y_l) - S_ref(y_l))]`` per item, ``[B]``."""
        field, table = self.preferred
        chosen, rejected = getattr(batch, field), batch.forget
        assert chosen is not None
        if not torch.equal(chosen["index"], rejected["index"]):
            raise ValueError(f"batch.{field} must hold the forget items in the same order")
        s_w = sequence_logprob(fwd.logits(chosen), chosen["labels"])
        s_l = sequence_logprob(fwd.logits(rejected), rejected["labels"])
        return self.beta * (
            (s_w - self._reference_rows(table, chosen, s_w.device))
            - (s_l - self._reference_rows("forget_logp", rejected, s_l.device))
        )


class IdkDPO(DPO):
    """The same loss under the name used by TOFU-style benchmarks ("I don't know" DPO)."""

    name = "idkdpo"
