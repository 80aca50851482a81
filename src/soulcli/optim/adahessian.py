"""AdaHessian (Yao, Gholami, Shen, Mustafa, Keutzer, Mahoney, "ADAHESSIAN: An Adaptive Second
Order Optimizer for Machine Learning", AAAI 2021, eqs. 9-11 and Algorithm 1):

    D     = block_mean(|u * (H u)|)                      Hutchinson diagonal, u Rademacher
    m <- b1 * m + (1 - b1) * g;    v <- b2 * v + (1 - b2) * D**2     (v: every k steps)
    d  = (m / (1 - b1**t)) / ((v / (1 - b2**n))**(k_h / 2) + eps)
    p <- p * (1 - lr * wd) - lr * d                        (shared: soulcli.optim.base)

with ``t`` the step count, ``n`` the number of curvature updates so far and ``k_h`` the
Hessian power (1: the paper's default). Block averaging (the paper's "spatial averaging")
replaces each entry of D by the mean of |D| over ``block_size`` consecutive entries of the
last dimension, for tensors whose last dimension it divides; 1 turns it off.

Fed by the Hutchinson estimator (``update_hessian(diagonal=...)``). Fed squared gradients
instead (GNB, empirical Fisher), it takes ``D = bs * g**2`` as the diagonal estimate.
"""

from __future__ import annotations

from typing import Annotated, Any, Iterable

import torch
from torch import Tensor

from soulcli.errors import UserError
from soulcli.optim.base import (DIAGNOSTICS_EVERY, Betas, DiagnosticsEvery, Eps, LearningRate,
                                SecondOrderOptimizer, WeightDecay)
from soulcli.schema import AT_LEAST_ONE, Range


def block_average(d: Tensor, block_size: int) -> Tensor:
    """|d| averaged over blocks of ``block_size`` along the last dimension.

    A tensor whose last dimension ``block_size`` does not divide gets plain |d|.
    """
    d = d.abs()
    if block_size <= 1 or d.ndim == 0 or d.shape[-1] % block_size:
        return d
    blocks = d.reshape(*d.shape[:-1], d.shape[-1] // block_size, block_size)
    return blocks.mean(-1, keepdim=True).expand_as(blocks).reshape(d.shape)


class AdaHessian(SecondOrderOptimizer):
    """AdaHessian; the paper's defaults ``lr=0.15, betas=(0.9, 0.999), eps=1e-4,
    weight_decay=0, hessian_power=1``, ``block_size=1`` (no averaging).

    Diagnostics: ``hessian_norm`` (``|sqrt(v)|``) after each curvature update, ``update_norm``
    every ``diagnostics_every`` steps."""

    state_names = ("exp_avg", "exp_hessian_diag_sq")
    curvature_state = "exp_hessian_diag_sq"
    default_curvature = "hutchinson"

    def __init__(self, params: Iterable[Any], lr: LearningRate = 0.15,
                 betas: Betas = (0.9, 0.999), weight_decay: WeightDecay = 0.0, *,
                 eps: Eps = 1e-4,
                 hessian_power: Annotated[float, Range(gt=0, le=1), "k_h"] = 1.0,
                 block_size: Annotated[int, AT_LEAST_ONE, "spatial averaging"] = 1,
                 diagnostics_every: DiagnosticsEvery = DIAGNOSTICS_EVERY) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                      eps=eps, hessian_power=hessian_power,
                                      block_size=block_size, bs=1), diagnostics_every)

    def absorb(self, estimate: Tensor, state: dict[str, Tensor], group: dict,
               squared: bool) -> None:
        if squared:
            estimate = estimate * estimate * group["bs"]
        d = block_average(estimate, group["block_size"])
        beta2 = group["betas"][1]
        state["exp_hessian_diag_sq"].mul_(beta2).addcmul_(d, d, value=1 - beta2)

    def curvature_sq(self, state: dict[str, Tensor]) -> Tensor:
        # hessian_norm = |sqrt(v)|: the state is an EMA of squared curvature
        return state["exp_hessian_diag_sq"].sum()

    def update(self, g: Tensor, state: dict[str, Tensor], group: dict) -> Tensor:
        if group["hessian_step"] == 0:
            raise UserError("adahessian stepped before any curvature update: run its curvature "
                            "estimator (update_hessian) before the first step")
        beta1, beta2 = group["betas"]
        m = state["exp_avg"].lerp_(g, 1 - beta1)
        denom = state["exp_hessian_diag_sq"] / (1 - beta2 ** group["hessian_step"])
        denom = denom.sqrt_() if group["hessian_power"] == 1.0 else denom.pow_(
            group["hessian_power"] / 2)
        return (m / (1 - beta1 ** group["step"])).div_(denom.add_(group["eps"]))
