"""One-pass CPU kernel (numba) for the Sophia step: :mod:`soulcli.optim.sophia`'s accelerator.

Why: on CPU a step is bound by passes over memory and by per-op dispatch, not by arithmetic.
Sophia's rule written as torch ops is about six elementwise passes per parameter (momentum,
abs, ratio, clamp, sign, update) plus weight decay, several times the cost of torch's fused
AdamW kernel, and counting the win rate costs more passes on top. This kernel does momentum,
ratio, clip, weight decay, update and the diagnostics' sums in a single parallel pass over the
group, about as fast as fused AdamW with the diagnostics included (``bench/bench_optim.py``).

It applies to groups whose parameters with gradients are fp32, contiguous and on CPU (the
default on CPU), parameter and gradient alike; anything else takes the plain rule, which
computes the same update. ``SOUL_CPU_KERNELS=0`` in the environment switches it off.

Arithmetic per coordinate, on the state the plain rule keeps (m, h)::

    m = b1 * m + (1 - b1) * g
    r = |m| * m_scale / (rho * bs * max(h, 0) + eps)       (m_scale: bias correction, or 1)
    c = min(r, 1)
    p = p * decay - lr * copysign(c, m)                     (decay = 1 - lr * wd)

and, every step (they cost almost nothing here), ``sum(c**2)`` and the number of clipped
coordinates (``r >= 1``). ``max(h, 0)`` is SophiaH's positive part and changes nothing for
SophiaG, whose h is never negative. Only the two sums may be reassociated (``fastmath``
reassoc), so the parameters and state are computed as written, in fp32 like torch's CPU ops;
the sums are the same for a given thread count. One parallel loop covers the whole group: its
parameters are cut into blocks of :data:`BLOCK` elements, so small tensors cost no thread
launch of their own. The first call in a fresh install compiles the kernel (a few seconds per
distinct number of parameters) and caches it on disk.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import torch

from soulcli.optim.base import local_tensor

try:  # numba is a dependency; a broken install only costs speed
    import numba
    from numba import njit, prange
except Exception:  # pragma: no cover - exercised only where numba cannot load
    numba = None

_FLAGS = {"reassoc", "nsz"}
BLOCK = 1 << 15  # elements per parallel work item

if numba is not None:
    import numpy as np

    # error_model="numpy": no ZeroDivisionError branch per element, so the loop vectorizes
    @njit(fastmath=_FLAGS, error_model="numpy", inline="always", cache=True)
    def _sophia_range(p, g, m, h, beta1, weight, m_scale, rho_bs, eps, neg_lr,
                      decay):  # pragma: no cover
        # fp32 throughout; a block is at most BLOCK elements, so the fp32 count is exact
        zero, one = np.float32(0.0), np.float32(1.0)
        sq = zero
        clipped = zero
        for i in range(p.shape[0]):
            mi = beta1 * m[i] + weight * g[i]
            m[i] = mi
            r = abs(mi) * m_scale / (rho_bs * max(h[i], zero) + eps)
            c = min(r, one)
            p[i] = p[i] * decay + neg_lr * math.copysign(c, mi)
            sq += c * c
            clipped += one if r >= one else zero
        return sq, clipped

    @njit(parallel=True, fastmath=_FLAGS, error_model="numpy", cache=True)
    def _sophia_blocks(ps, gs, ms, hs, blocks, beta1, weight, m_scale, rho_bs, eps, neg_lr,
                       decay):  # pragma: no cover
        n = blocks.shape[0]
        sq = np.zeros(n)
        clipped = np.zeros(n)
        for b in prange(n):
            k, lo, hi = blocks[b, 0], blocks[b, 1], blocks[b, 2]
            sq[b], clipped[b] = _sophia_range(ps[k][lo:hi], gs[k][lo:hi], ms[k][lo:hi],
                                              hs[k][lo:hi], beta1, weight, m_scale, rho_bs,
                                              eps, neg_lr, decay)
        return sq.sum(), clipped.sum()


def enabled() -> bool:
    return numba is not None and os.environ.get("SOUL_CPU_KERNELS", "1") != "0"


def _fits(t: torch.Tensor) -> bool:
    return t.is_cpu and t.dtype == torch.float32 and t.is_contiguous()


def applicable(params: Sequence[torch.Tensor]) -> bool:
    """Whether these parameters (all with gradients) and their gradients can take the kernel
    (DTensors through their local shards)."""
    if not enabled():
        return False
    return all(_fits(local_tensor(p)) and _fits(local_tensor(p.grad)) for p in params)


def flat_numpy(t: torch.Tensor) -> Any:
    """A numpy view sharing ``t``'s memory (``t`` fp32, contiguous, on CPU)."""
    return t.detach().view(-1).numpy()


def block_table(numels: list[int]) -> Any:
    """``[n, 3]`` int64 rows (tensor, start, stop) cutting the tensors into work items of at
    most :data:`BLOCK` elements."""
    rows = [(k, lo, min(n, lo + BLOCK)) for k, n in enumerate(numels) for lo in range(0, n, BLOCK)]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def sophia_step(params: tuple, ms: tuple, hs: tuple, blocks: Any, grads: tuple, *, beta1: float,
                m_scale: float, rho_bs: float, eps: float, lr: float,
                decay: float) -> tuple[float, int, int]:
    """One Sophia step over a group (numpy views, one per parameter); returns (sum of the
    clipped ratios squared, number of clipped coordinates, number of coordinates)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    f32 = np.float32
    sq, clipped = _sophia_blocks(params, grads, ms, hs, blocks, f32(beta1), f32(1 - beta1),
                                 f32(m_scale), f32(rho_bs), f32(eps), f32(-lr), f32(decay))
    return float(sq), int(clipped), int(sum(p.shape[0] for p in params))
