"""Muon: momentum orthogonalised by Newton-Schulz (Jordan et al. 2024,
https://kellerjordan.github.io/posts/muon/; Liu et al., "Muon is Scalable for LLM Training",
arXiv:2502.16982), on 2-D parameters, with the arithmetic of ``torch.optim.Muon``:

    b <- mu * b + (1 - mu) * g;   u = g + mu * (b - g) if nesterov else b
    d  = s * NewtonSchulz5(u)
    p <- p * (1 - lr * wd) - lr * d                        (shared: soulcli.optim.base)

with ``s = 0.2 * sqrt(max(rows, cols))`` ("match_rms_adamw", Liu et al. eq. 4), which gives
the update the RMS of an AdamW step so one lr serves both halves: every parameter that is not
a matrix (norms, biases) gets AdamW's direction with ``adamw_betas``/``adamw_eps``.
Embeddings and the output head are matrices and go to Muon unless passed in another
optimizer. Muon is not elementwise: it needs whole matrices, not FSDP shards.
Registered only where ``torch.optim.Muon`` exists. ``NewtonSchulz5`` is the quintic iteration
``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` and ``(a, b, c) = (3.4445, -4.775, 2.0315)``,
from ``X = U / |U|_F``; it runs in bf16 on accelerators (as torch does) and in fp32 on CPU,
where small bf16 matrix products are slower, not faster.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Iterable, Literal

import torch
from torch import Tensor

from soulcli.errors import UserError
from soulcli.optim.adamw import adam_direction
from soulcli.optim.base import (DIAGNOSTICS_EVERY, Betas, DiagnosticsEvery, Eps, LearningRate,
                                Momentum, RuleOptimizer, WeightDecay)
from soulcli.schema import AT_LEAST_ONE

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


def lr_factor(rule: str, shape: torch.Size) -> float:
    """``s``: the matrix step's scale relative to lr (torch's ``adjust_lr_fn``)."""
    rows, cols = shape[0], shape[1]
    if rule == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1.0, rows / cols))


class Muon(RuleOptimizer):
    """Muon for matrices + AdamW for the rest; defaults ``lr=1e-3, weight_decay=0.1,
    momentum=0.95, nesterov=True, ns_steps=5`` (torch's), ``adjust_lr_fn="match_rms_adamw"``."""

    def __init__(self, params: Iterable[Any], lr: LearningRate = 1e-3,
                 weight_decay: WeightDecay = 0.1, *, momentum: Momentum = 0.95,
                 nesterov: bool = True,
                 ns_steps: Annotated[int, AT_LEAST_ONE, "Newton-Schulz iterations"] = 5,
                 adjust_lr_fn: Literal["match_rms_adamw", "original"] = "match_rms_adamw",
                 adamw_betas: Betas = (0.9, 0.95), adamw_eps: Eps = 1e-8,
                 diagnostics_every: DiagnosticsEvery = DIAGNOSTICS_EVERY) -> None:
        if not hasattr(torch.optim, "Muon"):
            raise UserError("optimizer 'muon' needs a torch with torch.optim.Muon")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      nesterov=nesterov, ns_steps=ns_steps,
                                      adjust_lr_fn=adjust_lr_fn, adamw_betas=tuple(adamw_betas),
                                      adamw_eps=adamw_eps), diagnostics_every)

    @classmethod
    def state_names_for(cls, p: Tensor) -> tuple[str, ...]:
        return ("momentum_buffer",) if p.ndim == 2 else ("exp_avg", "exp_avg_sq")

    def update(self, g: Tensor, state: dict[str, Tensor], group: dict) -> Tensor:
        if g.ndim != 2:
            return adam_direction(g, state["exp_avg"], state["exp_avg_sq"], group["adamw_betas"],
                                  group["adamw_eps"], group["step"])
        mu, buf = group["momentum"], state["momentum_buffer"]
        buf.lerp_(g, 1 - mu)
        u = newton_schulz(g.lerp(buf, mu) if group["nesterov"] else buf, group["ns_steps"])
        return u.mul_(lr_factor(group["adjust_lr_fn"], g.shape))
