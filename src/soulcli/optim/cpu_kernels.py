"""One-pass CPU kernels (numba) for the Sophia step, used when they apply.

Why: on CPU the torch form of a Sophia step is three elementwise passes (momentum, clip,
update) plus per-op dispatch, about 1.7x the time of torch's fused AdamW kernel, and counting
the win rate costs more passes on top. These kernels do momentum, clip, weight decay, update
and the diagnostics' sums in a single parallel pass, about as fast as fused
AdamW with the diagnostics included (``bench/bench_optim.py``).

They apply to fp32, contiguous, CPU parameters and gradients (the default on CPU); anything
else (CUDA, bf16 parameters, strided views) takes the torch path, which computes the same
update. ``SOUL_CPU_KERNELS=0`` in the environment switches them off.

Arithmetic per coordinate, in the stored form :mod:`soulcli.optim.sophia` documents
(``q = m / (s * d)``, ``d`` the stored Hessian with eps folded in, ``bound = rho * bs / s``)::

    d = max(h, floor)                      (== h for SophiaG, whose h is never below the floor)
    q = keep * q + weight * g / d
    c = clamp(q, -bound, bound)
    p = p * decay + alpha * c              (decay = 1 - lr * wd, alpha = -lr / bound)

and, every step (they cost almost nothing here), ``sum(c**2)`` and the number of clipped
coordinates (``|q| > bound``). Only the two sums may be reassociated (``fastmath`` reassoc),
so the parameters and state are computed exactly as written, in fp32 like torch's CPU ops;
the sums are the same for a given thread count. One parallel loop covers a whole bank: its parameters are cut into blocks
of :data:`BLOCK` elements, so small tensors cost no thread launch of their own. The first
call in a fresh install compiles the kernel (a few seconds) and caches it on disk.
"""

from __future__ import annotations

import os
from typing import Any

import torch

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
    def _sophia_range(p, g, q, h, keep, weight, bound, alpha, decay, floor):  # pragma: no cover
        # fp32 throughout, like torch's CPU ops on fp32 tensors; a block is at most BLOCK
        # elements, so the fp32 count is exact
        sq = np.float32(0.0)
        clipped = np.float32(0.0)
        for i in range(p.shape[0]):
            qi = keep * q[i] + weight * g[i] / max(h[i], floor)
            q[i] = qi
            c = min(max(qi, -bound), bound)
            p[i] = p[i] * decay + alpha * c
            sq += c * c
            clipped += np.float32(1.0) if abs(qi) > bound else np.float32(0.0)
        return sq, clipped

    @njit(parallel=True, fastmath=_FLAGS, error_model="numpy", cache=True)
    def _sophia_blocks(ps, gs, q, h, blocks, keep, weight, bound, alpha, decay,
                       floor):  # pragma: no cover
        n = blocks.shape[0]
        sq = np.zeros(n)
        clipped = np.zeros(n)
        for b in prange(n):
            k, lo, hi, off = blocks[b, 0], blocks[b, 1], blocks[b, 2], blocks[b, 3]
            sq[b], clipped[b] = _sophia_range(ps[k][lo:hi], gs[k][lo:hi], q[off + lo:off + hi],
                                              h[off + lo:off + hi], keep, weight, bound, alpha,
                                              decay, floor)
        return sq.sum(), clipped.sum()


def enabled() -> bool:
    return numba is not None and os.environ.get("SOUL_CPU_KERNELS", "1") != "0"


def applicable(params: list[torch.Tensor], grads: list[torch.Tensor | None]) -> bool:
    """Whether every present (param, grad) pair can go through the kernel."""
    if not enabled():
        return False
    f32 = torch.float32
    for p, g in zip(params, grads):
        if g is None:
            continue
        if (not p.is_cpu or p.dtype != f32 or not p.is_contiguous() or not g.is_cpu
                or g.dtype != f32 or not g.is_contiguous()):
            return False
    return True


def flat_numpy(t: torch.Tensor) -> Any:
    """A numpy view sharing ``t``'s memory (``t`` fp32, contiguous, on CPU)."""
    return t.detach().view(-1).numpy()


def block_table(numels: list[int], offsets: list[int], present: list[int]) -> Any:
    """``[n, 4]`` int64 rows (tensor, start, stop, flat offset) cutting the present tensors
    into work items of at most :data:`BLOCK` elements."""
    rows = [(k, lo, min(numels[k], lo + BLOCK), offsets[k])
            for k in present for lo in range(0, numels[k], BLOCK)]
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def sophia_step(params: tuple, grads: tuple, q: Any, h: Any, blocks: Any, *, keep: float,
                weight: float, bound: float, alpha: float, decay: float,
                floor: float) -> tuple[float, int]:
    """One Sophia step over a bank (numpy views: per-parameter ``params``/``grads``, flat
    ``q``/``h``); returns (sum of clipped ratios squared, number of clipped coordinates)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    f32 = np.float32
    sq, clipped = _sophia_blocks(params, grads, q, h, blocks, f32(keep), f32(weight), f32(bound),
                                 f32(alpha), f32(decay), f32(floor))
    return float(sq), int(clipped)
