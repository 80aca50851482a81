"""AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019), run by
torch's own fused (or foreach) kernel on fp32 state.

    m <- b1 * m + (1 - b1) * g;   v <- b2 * v + (1 - b2) * g**2
    p <- p * (1 - lr * wd) - lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)

The arithmetic is ``torch.optim.adam.adam(..., decoupled_weight_decay=True)``, the function
``torch.optim.AdamW`` itself calls, so the numbers are torch's; the difference is that state
stays fp32 for bf16 parameters (which are updated through an fp32 copy).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import Tensor
from torch.optim.adam import adam as torch_adam

from soulcli.optim.base import (
    DIAGNOSTICS_EVERY,
    Bank,
    TorchKernelOptimizer,
    check_betas,
    check_nonnegative,
    check_positive,
    fused_supported,
)


class AdamW(TorchKernelOptimizer):
    """AdamW with torch's defaults: ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2``.

    ``fused=None`` picks torch's fused kernel where it exists (CPU, CUDA) and foreach elsewhere.
    """

    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: Sequence[float] = (0.9, 0.999), weight_decay: float = 1e-2, *,
                 eps: float = 1e-8, fused: bool | None = None,
                 diagnostics_every: int = DIAGNOSTICS_EVERY) -> None:
        check_positive("AdamW", eps=eps)
        check_nonnegative("AdamW", lr=lr, weight_decay=weight_decay)
        defaults = dict(lr=lr, betas=check_betas("AdamW", betas), weight_decay=weight_decay,
                        eps=eps, fused=fused)
        super().__init__(params, defaults, diagnostics_every)

    def _kernel(self, group: dict, bank: Bank, present: list[int], params: list[Tensor],
                grads: list[Tensor]) -> None:
        adamw_kernel(self, bank, present, params, grads, lr=group["lr"], betas=group["betas"],
                     weight_decay=group["weight_decay"], eps=group["eps"], fused=group["fused"])


def adamw_kernel(opt: TorchKernelOptimizer, bank: Bank, present: list[int], params: list[Tensor],
                 grads: list[Tensor], *, lr: float, betas: Sequence[float], weight_decay: float,
                 eps: float, fused: bool | None) -> None:
    """torch's AdamW arithmetic on ``bank``'s fp32 ``exp_avg``/``exp_avg_sq`` and ``step``."""
    device = params[0].device
    fused = fused_supported(device) if fused is None else fused
    steps = []
    for i in present:
        state = opt.state[bank.params[i]]
        if "step" not in state:
            # torch's layout: a float32 scalar, on the parameter's device for the fused kernel
            state["step"] = torch.zeros((), dtype=torch.float32, device=device if fused else "cpu")
        steps.append(state["step"])
    torch_adam(params, grads, opt._views(bank, present, "exp_avg"),
               opt._views(bank, present, "exp_avg_sq"), [], steps, foreach=not fused,
               fused=fused, decoupled_weight_decay=True, amsgrad=False, beta1=betas[0],
               beta2=betas[1], lr=lr, weight_decay=weight_decay, eps=eps, maximize=False)
