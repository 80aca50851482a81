"""Signum: sign of momentum (Bernstein, Wang, Azizzadenesheli, Anandkumar, "signSGD:
Compressed Optimisation for Non-Convex Problems", ICML 2018, Algorithm 3).

    m <- b * m + (1 - b) * g
    p <- p * (1 - lr * wd) - lr * sign(m)

It is SophiaG with every coordinate clipped (win rate 0), which makes it the baseline to
compare a badly tuned rho against.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from soulcli.optim.base import (
    DIAGNOSTICS_EVERY,
    Bank,
    Chunk,
    FlatStateOptimizer,
    check_betas,
    check_nonnegative,
    decay_and_add,
)


def signed_step(group: dict, bank: Bank, chunk: Chunk, direction: Tensor,
                sums: dict[str, list[Tensor]] | None) -> None:
    """``p <- p * (1 - lr * wd) - lr * sign(direction)`` (the sign goes to the chunk's scratch)."""
    lr, wd = group["lr"], group["weight_decay"]
    direction = torch.sign(direction, out=chunk.scratch)
    decay_and_add(bank, chunk.params, chunk.scratch_segs, -lr, lr * wd)
    if sums is not None:
        sums.setdefault("update_sq", []).append(torch.dot(direction, direction) * lr**2)


class Signum(FlatStateOptimizer):
    """Signum; defaults ``lr=1e-4, momentum=0.9, weight_decay=0`` (decoupled)."""

    state_names = ("exp_avg",)

    def __init__(self, params: Iterable[Any], lr: float = 1e-4, weight_decay: float = 0.0, *,
                 momentum: float = 0.9, diagnostics_every: int = DIAGNOSTICS_EVERY) -> None:
        check_nonnegative("Signum", lr=lr, weight_decay=weight_decay)
        check_betas("Signum", [momentum], count=1)
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum),
                         diagnostics_every)

    def _step_bank(self, group: dict, bank: Bank, chunks: list[Chunk],
                   grads: list[Tensor | None], sums: dict[str, list[Tensor]] | None) -> None:
        self._ema_grads(bank, grads, "exp_avg", group["momentum"])
        for chunk in chunks:
            signed_step(group, bank, chunk, chunk.flat["exp_avg"], sums)
