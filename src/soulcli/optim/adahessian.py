"""AdaHessian (Yao, Gholami, Shen, Mustafa, Keutzer, Mahoney, "ADAHESSIAN: An Adaptive Second
Order Optimizer for Machine Learning", AAAI 2021, eqs. 9-11 and Algorithm 1):

    D     = block_mean(|u * (H u)|)                      Hutchinson diagonal, u Rademacher
    m <- b1 * m + (1 - b1) * g;    v <- b2 * v + (1 - b2) * D**2     (v: every k steps)
    p <- p * (1 - lr * wd) - lr * (m / (1 - b1**t)) / ((v / (1 - b2**n))**(k_h / 2) + eps)

with ``t`` the step count, ``n`` the number of curvature updates so far and ``k_h`` the
Hessian power (1: the paper's default). Block averaging (the paper's "spatial averaging")
replaces each entry of D by the mean of |D| over ``block_size`` consecutive entries of the
last dimension, for tensors whose last dimension it divides; 1 turns it off.

Fed by the Hutchinson estimator (``update_hessian(diagonal=...)``). Fed squared gradients
instead (GNB, empirical Fisher), it takes ``D = bs * g**2`` as the diagonal estimate.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from soulcli.errors import UserError
from soulcli.optim.base import (
    DIAGNOSTICS_EVERY,
    Bank,
    Chunk,
    SecondOrderOptimizer,
    check_betas,
    check_nonnegative,
    check_positive,
)


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

    def __init__(self, params: Iterable[Any], lr: float = 0.15,
                 betas: Sequence[float] = (0.9, 0.999), weight_decay: float = 0.0, *,
                 eps: float = 1e-4, hessian_power: float = 1.0, block_size: int = 1,
                 diagnostics_every: int = DIAGNOSTICS_EVERY) -> None:
        check_positive("AdaHessian", eps=eps, block_size=block_size)
        check_nonnegative("AdaHessian", lr=lr, weight_decay=weight_decay)
        if not 0.0 < hessian_power <= 1.0:
            raise UserError(f"AdaHessian: hessian_power must be in (0, 1], got {hessian_power}")
        defaults = dict(lr=lr, betas=check_betas("AdaHessian", betas), weight_decay=weight_decay,
                        eps=eps, hessian_power=float(hessian_power), block_size=int(block_size),
                        bs=1)
        super().__init__(params, defaults, diagnostics_every)

    def _absorb(self, group: dict, bank: Bank, present: list[int], estimates: list[Tensor],
                squared: bool) -> None:
        beta2 = group["betas"][1]
        if squared:
            estimates = [e * e * group["bs"] for e in estimates]
        d = [block_average(e, group["block_size"]) for e in estimates]
        views = self._ema_views(bank, present, "exp_hessian_diag_sq", beta2)
        torch._foreach_addcmul_(views, d, d, value=1 - beta2)

    def _curvature_sq(self, bank: Bank) -> Tensor:
        # hessian_norm = |sqrt(v)|: the state is an EMA of squared curvature
        return bank.buffers["exp_hessian_diag_sq"].sum()

    def _step_bank(self, group: dict, bank: Bank, chunks: list[Chunk],
                   grads: list[Tensor | None], sums: dict[str, list[Tensor]] | None) -> None:
        if group["hessian_step"] == 0:
            raise UserError("adahessian stepped before any curvature update: run its curvature "
                            "estimator (update_hessian) before the first step")
        beta1, beta2 = group["betas"]
        lr, wd, power = group["lr"], group["weight_decay"], group["hessian_power"]
        bc1 = 1 - beta1 ** group["step"]
        bc2 = 1 - beta2 ** group["hessian_step"]
        self._ema_grads(bank, grads, "exp_avg", beta1)
        for chunk in chunks:
            denom = chunk.scratch
            torch.mul(chunk.flat["exp_hessian_diag_sq"], 1 / bc2, out=denom)
            if power == 1.0:
                denom.sqrt_()
            else:
                denom.pow_(power / 2)
            denom.add_(group["eps"])
            if wd:
                torch._foreach_mul_(chunk.params, 1 - lr * wd)
            torch._foreach_addcdiv_(chunk.params, chunk.segs["exp_avg"], chunk.scratch_segs,
                                    value=-lr / bc1)
            if sums is not None:
                update = torch.div(chunk.flat["exp_avg"], denom)
                sums.setdefault("update_sq", []).append(torch.dot(update, update) * (lr / bc1) ** 2)
