"""Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023,
Algorithm 2):

    u <- sign(b1 * m + (1 - b1) * g)
    p <- p * (1 - lr * wd) - lr * u
    m <- b2 * m + (1 - b2) * g
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from soulcli.optim.base import (
    DIAGNOSTICS_EVERY,
    Bank,
    Chunk,
    FlatStateOptimizer,
    check_betas,
    check_nonnegative,
)
from soulcli.optim.signum import signed_step


class Lion(FlatStateOptimizer):
    """Lion; the paper's defaults ``lr=1e-4, betas=(0.9, 0.99), weight_decay=0`` (decoupled;
    the authors suggest an lr 3-10x below AdamW's and a weight decay 3-10x above)."""

    state_names = ("exp_avg",)

    def __init__(self, params: Iterable[Any], lr: float = 1e-4,
                 betas: Sequence[float] = (0.9, 0.99), weight_decay: float = 0.0, *,
                 diagnostics_every: int = DIAGNOSTICS_EVERY) -> None:
        check_nonnegative("Lion", lr=lr, weight_decay=weight_decay)
        super().__init__(params, dict(lr=lr, betas=check_betas("Lion", betas),
                                      weight_decay=weight_decay), diagnostics_every)

    def _step_bank(self, group: dict, bank: Bank, chunks: list[Chunk],
                   grads: list[Tensor | None], sums: dict[str, list[Tensor]] | None) -> None:
        beta1, beta2 = group["betas"]
        for chunk in chunks:
            g = chunk.grads(grads)
            chunk.scratch.copy_(chunk.flat["exp_avg"])
            torch._foreach_lerp_(chunk.scratch_segs, g, 1 - beta1)
            signed_step(group, bank, chunk, chunk.scratch, sums)
            torch._foreach_lerp_(chunk.segs["exp_avg"], g, 1 - beta2)
