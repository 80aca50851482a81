"""Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023,
Algorithm 2):

    u  = sign(b1 * m + (1 - b1) * g)
    m <- b2 * m + (1 - b2) * g
    p <- p * (1 - lr * wd) - lr * u                        (shared: soulcli.optim.base)
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from soulcli.optim.base import (DIAGNOSTICS_EVERY, Betas, DiagnosticsEvery, LearningRate,
                                RuleOptimizer, WeightDecay)


class Lion(RuleOptimizer):
    """Lion; the paper's defaults ``lr=1e-4, betas=(0.9, 0.99), weight_decay=0`` (decoupled;
    the authors suggest an lr 3-10x below AdamW's and a weight decay 3-10x above)."""

    state_names = ("exp_avg",)

    def __init__(self, params: Iterable[Any], lr: LearningRate = 1e-4,
                 betas: Betas = (0.9, 0.99), weight_decay: WeightDecay = 0.0, *,
                 diagnostics_every: DiagnosticsEvery = DIAGNOSTICS_EVERY) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay),
                         diagnostics_every)

    def update(self, g: Tensor, state: dict[str, Tensor], group: dict) -> Tensor:
        beta1, beta2 = group["betas"]
        m = state["exp_avg"]
        direction = torch.lerp(m, g, 1 - beta1).sign_()
        m.lerp_(g, 1 - beta2)
        return direction
