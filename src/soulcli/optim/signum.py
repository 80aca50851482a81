"""Signum: sign of momentum (Bernstein, Wang, Azizzadenesheli, Anandkumar, "signSGD:
Compressed Optimisation for Non-Convex Problems", ICML 2018, Algorithm 3).

    m <- b * m + (1 - b) * g
    p <- p * (1 - lr * wd) - lr * sign(m)                  (shared: soulcli.optim.base)

It is SophiaG with every coordinate clipped (win rate 0), which makes it the baseline to
compare a badly tuned rho against.
"""

from __future__ import annotations

from typing import Any, Iterable

from torch import Tensor

from soulcli.optim.base import (DIAGNOSTICS_EVERY, DiagnosticsEvery, LearningRate, Momentum,
                                RuleOptimizer, WeightDecay)


class Signum(RuleOptimizer):
    """Signum; defaults ``lr=1e-4, momentum=0.9, weight_decay=0`` (decoupled)."""

    state_names = ("exp_avg",)

    def __init__(self, params: Iterable[Any], lr: LearningRate = 1e-4,
                 weight_decay: WeightDecay = 0.0, *, momentum: Momentum = 0.9,
                 diagnostics_every: DiagnosticsEvery = DIAGNOSTICS_EVERY) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum),
                         diagnostics_every)

    def update(self, g: Tensor, state: dict[str, Tensor], group: dict) -> Tensor:
        return state["exp_avg"].lerp_(g, 1 - group["momentum"]).sign()
