"""SGD with heavy-ball momentum (Polyak 1964; the form of Sutskever et al. 2013 that torch
uses) and decoupled weight decay (SGDW, Loshchilov & Hutter, ICLR 2019, Algorithm 1):

    b <- mu * b + g
    d  = g + mu * b if nesterov else b
    p <- p * (1 - lr * wd) - lr * d                        (shared: soulcli.optim.base)
"""

from __future__ import annotations

from typing import Any, Iterable

from torch import Tensor

from soulcli.optim.base import (DIAGNOSTICS_EVERY, DiagnosticsEvery, LearningRate, Momentum,
                                RuleOptimizer, WeightDecay)


class SGD(RuleOptimizer):
    """SGD with momentum; defaults ``lr=1e-2, momentum=0.9, nesterov=False, weight_decay=0``."""

    state_names = ("momentum_buffer",)

    def __init__(self, params: Iterable[Any], lr: LearningRate = 1e-2,
                 weight_decay: WeightDecay = 0.0, *,
                 momentum: Momentum = 0.9,
                 nesterov: bool = False,
                 diagnostics_every: DiagnosticsEvery = DIAGNOSTICS_EVERY) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      nesterov=nesterov), diagnostics_every)

    def update(self, g: Tensor, state: dict[str, Tensor], group: dict) -> Tensor:
        mu, buf = group["momentum"], state["momentum_buffer"]
        buf.mul_(mu).add_(g)
        return g.add(buf, alpha=mu) if group["nesterov"] else buf
