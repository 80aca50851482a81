"""Muon: momentum orthogonalised by Newton-Schulz (Jordan et al. 2024,
https://kellerjordan.github.io/posts/muon/; Liu et al., "Muon is Scalable for LLM Training",
arXiv:2502.16982), on 2-D parameters, with the arithmetic of ``torch.optim.Muon``:

    b <- mu * b + (1 - mu) * g;   u <- g + mu * (b - g) if nesterov else b
    p <- p * (1 - lr * wd) - lr' * NewtonSchulz5(u)

with ``lr' = lr * 0.2 * sqrt(max(rows, cols))`` ("match_rms_adamw", Liu et al. eq. 4), which
gives the update the RMS of an AdamW step so one lr serves both halves: every parameter that
is not a matrix (norms, biases) is updated by AdamW with ``adamw_betas``/``adamw_eps``.
Embeddings and the output head are matrices and go to Muon unless passed in another
optimizer. Muon is not elementwise: it needs whole matrices, not FSDP shards.
Registered only where ``torch.optim.Muon`` exists. ``NewtonSchulz5`` is the quintic iteration
``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` and ``(a, b, c) = (3.4445, -4.775, 2.0315)``,
from ``X = U / |U|_F``; it runs in bf16 on accelerators (as torch does) and in fp32 on CPU,
where small bf16 matrix products are slower, not faster.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import math

import torch
from torch import Tensor

from soulcli.errors import UserError
from soulcli.optim.adamw import adamw_kernel
from soulcli.optim.base import (
    DIAGNOSTICS_EVERY,
    Bank,
    TorchKernelOptimizer,
    check_betas,
    check_nonnegative,
    local_tensor,
)

ADJUST_LR = ("match_rms_adamw", "original")
NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)


def newton_schulz(update: Tensor, steps: int, eps: float = 1e-7) -> Tensor:
    """An approximately orthogonal matrix with the singular vectors of ``update``."""
    a, b, c = NS_COEFFICIENTS
    x = update.to(torch.float32 if update.device.type == "cpu" else torch.bfloat16)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def adjusted_lr(lr: float, rule: str, shape: torch.Size) -> float:
    rows, cols = shape[0], shape[1]
    if rule == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1.0, rows / cols))


class Muon(TorchKernelOptimizer):
    """Muon for matrices + AdamW for the rest; defaults ``lr=1e-3, weight_decay=0.1,
    momentum=0.95, nesterov=True, ns_steps=5`` (torch's), ``adjust_lr_fn="match_rms_adamw"``."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.1, *,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 adjust_lr_fn: str = "match_rms_adamw",
                 adamw_betas: Sequence[float] = (0.9, 0.95), adamw_eps: float = 1e-8,
                 diagnostics_every: int = DIAGNOSTICS_EVERY) -> None:
        if not hasattr(torch.optim, "Muon"):
            raise UserError("optimizer 'muon' needs a torch with torch.optim.Muon")
        check_nonnegative("Muon", lr=lr, weight_decay=weight_decay)
        check_betas("Muon", [momentum], count=1)
        if adjust_lr_fn not in ADJUST_LR:
            raise UserError(f"Muon: adjust_lr_fn must be one of {', '.join(ADJUST_LR)}, "
                            f"got '{adjust_lr_fn}'")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                        nesterov=bool(nesterov), ns_steps=int(ns_steps), adjust_lr_fn=adjust_lr_fn,
                        adamw_betas=check_betas("Muon", adamw_betas), adamw_eps=adamw_eps)
        super().__init__(params, defaults, diagnostics_every)

    def _role(self, p: Tensor) -> str:
        return "matrix" if local_tensor(p).ndim == 2 else "other"

    def _state_names(self, role: str) -> tuple[str, ...]:
        return ("momentum_buffer",) if role == "matrix" else ("exp_avg", "exp_avg_sq")

    def _kernel(self, group: dict, bank: Bank, present: list[int], params: list[Tensor],
                grads: list[Tensor]) -> None:
        if bank.role == "matrix":
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            for p, g, buf in zip(params, grads, self._views(bank, present, "momentum_buffer")):
                buf.lerp_(g, 1 - mu)
                update = newton_schulz(g.lerp(buf, mu) if group["nesterov"] else buf,
                                       group["ns_steps"])
                p.mul_(1 - lr * wd)
                p.add_(update, alpha=-adjusted_lr(lr, group["adjust_lr_fn"], p.shape))
            return
        adamw_kernel(self, bank, present, params, grads, lr=group["lr"],
                     betas=group["adamw_betas"], weight_decay=group["weight_decay"],
                     eps=group["adamw_eps"], fused=None)
