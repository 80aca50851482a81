"""``pdu``: flatten the forget logits under a retain-loss constraint, by primal-dual steps."""

from __future__ import annotations

from typing import Annotated, Any

import torch

from soulcli.errors import UserError
from soulcli.data.encode import pick_answer_logits
from soulcli.objectives.base import Forward, Objective, ObjectiveOutput, Terms, UnlearnBatch
from soulcli.objectives.reference import Batch
from soulcli.schema import NON_NEGATIVE, POSITIVE


class PDU(Objective):
    """Primal-dual unlearning (Entesari et al. 2025, "Constrained Entropic Unlearning: A
    Primal-Dual Framework for Large Language Models", arXiv:2506.05314: the constrained problem
    ``min L_fgt s.t. R(retain) <= eps``, the logit-margin flattening loss and the primal-dual
    updates; open-unlearning ``src/trainer/unlearn/pdu.py``):

        L_forget = mean_t (max_v z_t[v] - mean_v z_t[v])^2
        L        = gamma * L_forget + lambda * (R(retain) - eps)
        lambda  <- max(0, lambda + dual_step_size * (R(retain) - eps))   after every step

    ``z_t`` are the logits at the forget batch's answer positions: the loss is 0 exactly when
    the next-token distribution is uniform, without a softmax. ``lambda`` is the dual variable
    of the retain constraint; it starts at ``unlearn.retain_weight`` (so that must be > 0),
    lives in the objective instance, grows while the retain loss exceeds ``eps`` and shrinks
    towards 0 while it is below. Every call with gradients enabled counts as a step; the first
    ``dual_warmup_steps`` leave ``lambda`` unchanged. Logs ``dual`` (the ``lambda`` this step
    used) and ``retain_loss`` as the slack ``R - eps``.

    Defaults follow open-unlearning's class: ``retain_loss_eps = 0`` (its recipe leaves it to
    the user; the authors advise a value a little above the starting model's retain loss, else
    ``lambda`` only grows) and ``dual_step_size = 1``. Deliberate differences: the warm-up is
    counted in steps, not epochs (open-unlearning's recipe: 5 epochs); the dual update is per
    step only (its ``dual_update_upon = "epoch"`` variant is not offered); open-unlearning
    averages the flattening loss over every position, prompt and padding included, here only
    answer positions count. Under torchrun each rank updates ``lambda`` from its own shard's
    retain loss.
    """

    name = "pdu"
    accumulates = False  # the dual step at every call
    retain_loss_eps: Annotated[float, NON_NEGATIVE, "eps: the retain loss the constraint allows"] = 0.0
    dual_step_size: Annotated[float, POSITIVE, "step size of the dual ascent on lambda"] = 1.0
    dual_warmup_steps: Annotated[int, NON_NEGATIVE, "steps before lambda starts to move"] = 0

    def __init__(self, **args: Any) -> None:
        super().__init__(**args)
        if not self.uses_retain:
            raise UserError(
                "objective 'pdu': unlearn.retain_weight must be > 0 (it is the starting value of "
                "the dual variable of the retain constraint)"
            )
        self.steps = 0  # gradient-enabled calls so far

    def forget_term(self, fwd: Forward, batch: UnlearnBatch) -> Terms:
        data = batch.forget
        z = pick_answer_logits(fwd.logits(data), data["labels"])
        margin = z.max(-1).values - z.mean(-1)
        return margin.pow(2).mean(), {}

    def retain_term(self, fwd: Forward, data: Batch) -> torch.Tensor:
        return super().retain_term(fwd, data) - self.retain_loss_eps

    def __call__(self, model: torch.nn.Module, batch: UnlearnBatch) -> ObjectiveOutput:
        """The Lagrangian at the current ``lambda`` (``retain_weight``); then the dual step."""
        out = super().__call__(model, batch)
        logs = out.terms
        logs["dual"] = self.retain_weight
        if torch.is_grad_enabled():
            if self.steps >= self.dual_warmup_steps:
                slack = logs["retain_loss"]
                self.retain_weight = max(0.0, self.retain_weight + self.dual_step_size * slack)
            self.steps += 1
        return out
