"""SGD with heavy-ball momentum (Polyak 1964; the form of Sutskever et al. 2013 that torch
uses), run by torch's fused kernel on an fp32 momentum buffer.

    g <- g + wd * p                 (L2 weight decay, coupled, as torch.optim.SGD)
    b <- mu * b + g
    p <- p - lr * (g + mu * b if nesterov else b)
"""

from __future__ import annotations

from typing import Any, Iterable

from torch import Tensor
from torch.optim.sgd import sgd as torch_sgd

from soulcli.errors import UserError
from soulcli.optim.base import (
    DIAGNOSTICS_EVERY,
    Bank,
    TorchKernelOptimizer,
    check_nonnegative,
    fused_supported,
)


class SGD(TorchKernelOptimizer):
    """SGD with momentum; defaults ``lr=1e-2, momentum=0.9, nesterov=False, weight_decay=0``."""

    state_names = ("momentum_buffer",)

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, weight_decay: float = 0.0, *,
                 momentum: float = 0.9, nesterov: bool = False,
                 diagnostics_every: int = DIAGNOSTICS_EVERY) -> None:
        check_nonnegative("SGD", lr=lr, weight_decay=weight_decay, momentum=momentum)
        if nesterov and momentum <= 0:
            raise UserError("SGD: nesterov needs momentum > 0")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                        nesterov=bool(nesterov))
        super().__init__(params, defaults, diagnostics_every)

    def _kernel(self, group: dict, bank: Bank, present: list[int], params: list[Tensor],
                grads: list[Tensor]) -> None:
        fused = fused_supported(params[0].device)
        torch_sgd(params, grads, self._views(bank, present, "momentum_buffer"),
                  foreach=not fused, fused=fused, weight_decay=group["weight_decay"],
                  momentum=group["momentum"], lr=group["lr"], dampening=0.0,
                  nesterov=group["nesterov"], maximize=False)
