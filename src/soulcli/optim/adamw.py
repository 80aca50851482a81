"""AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019,
Algorithm 2), in torch's form of the bias corrections:

    m <- b1 * m + (1 - b1) * g;   v <- b2 * v + (1 - b2) * g**2
    d  = (m / (1 - b1**t)) / (sqrt(v) / sqrt(1 - b2**t) + eps)
    p <- p * (1 - lr * wd) - lr * d                        (shared: soulcli.optim.base)
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from torch import Tensor

from soulcli.optim.base import (DIAGNOSTICS_EVERY, Betas, DiagnosticsEvery, Eps, LearningRate,
                                RuleOptimizer, WeightDecay)


def adam_direction(g: Tensor, m: Tensor, v: Tensor, betas: tuple[float, float], eps: float,
                   step: int) -> Tensor:
    """Adam's bias-corrected direction, updating the moments ``m`` and ``v`` in place."""
    beta1, beta2 = betas
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = (v.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
    return (m / (1 - beta1**step)).div_(denom)


class AdamW(RuleOptimizer):
    """AdamW with torch's defaults: ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2``."""

    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: Iterable[Any], lr: LearningRate = 1e-3,
                 betas: Betas = (0.9, 0.999), weight_decay: WeightDecay = 1e-2, *,
                 eps: Eps = 1e-8, diagnostics_every: DiagnosticsEvery = DIAGNOSTICS_EVERY) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                      eps=eps), diagnostics_every)

    def update(self, g: Tensor, state: dict[str, Tensor], group: dict) -> Tensor:
        return adam_direction(g, state["exp_avg"], state["exp_avg_sq"], group["betas"],
                              group["eps"], group["step"])
