"""Batch plans, fixed before training so reference quantities can be cached in advance.

* Forget items: a fresh permutation each epoch, cut into batches, so every forget item is seen
  exactly once per epoch.
* Retain items: for each step a sample without replacement from a stream of permutations that
  depends on the seed, so the retain sample differs across steps.

Under torchrun with N ranks a step's batch is the global one, N times ``batch_size``, and rank r
takes its r-th slice (equal slices: the permutation is wrapped to a multiple of N, at most N - 1
items seen twice per epoch), so N ranks train on the batches of one process with a batch N times
larger, in the same order (rank 0's rows first).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepPlan:
    forget: list[int]
    retain: list[int] | None


def plan_unlearning(
    n_forget: int,
    n_retain: int,
    batch_size: int,
    retain_batch_size: int,
    epochs: int,
    seed: int,
    use_retain: bool,
    rank: int = 0,
    world_size: int = 1,
    max_steps: int | None = None,
) -> list[StepPlan]:
    """The (forget indices, retain indices) of every step of the run on ``rank``."""
    g = torch.Generator().manual_seed(seed)
    steps: list[StepPlan] = []
    for _ in range(epochs):
        steps += [StepPlan(b, None) for b in _rank_batches(torch.randperm(n_forget, generator=g).tolist(),
                                                            batch_size, rank, world_size)]
    if max_steps is not None:
        steps = steps[:max_steps]
    if not use_retain or n_retain == 0:
        return steps
    rg = torch.Generator().manual_seed(seed * 1_000_003 + 7919)
    pool: list[int] = []
    out = []
    for st in steps:
        take: list[int] = []
        while len(take) < retain_batch_size * world_size:
            if not pool:
                pool = torch.randperm(n_retain, generator=rg).tolist()
            take.append(pool.pop())
        out.append(StepPlan(st.forget, split(take, world_size)[rank]))
    return out


def _rank_batches(perm: list[int], batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """``perm`` cut into global batches of ``batch_size * world_size``, each rank's slice of
    each; the permutation is wrapped to a multiple of ``world_size`` so every slice of a batch
    has the same size (every rank takes the same steps and micro-batches)."""
    perm = perm + perm[: (-len(perm)) % world_size]
    step = batch_size * world_size
    return [split(perm[i: i + step], world_size)[rank] for i in range(0, len(perm), step)]


def split(indices: list[int], n: int) -> list[list[int]]:
    """``indices`` cut into ``min(n, len)`` consecutive pieces whose sizes differ by at most one
    (the micro-batches of a step: ``n`` pieces of ``size`` when ``len == n * size``)."""
    n = max(1, min(n, len(indices)))
    size, extra = divmod(len(indices), n)
    bounds = [k * size + min(k, extra) for k in range(n + 1)]
    return [indices[a:b] for a, b in zip(bounds, bounds[1:])]


def epoch_batches(n: int, batch_size: int, epochs: int, seed: int, rank: int = 0,
                  world_size: int = 1) -> list[list[int]]:
    """Shuffled batches for ordinary training (finetune), one permutation per epoch (under
    torchrun this rank's slices of the global batches, as for unlearning)."""
    g = torch.Generator().manual_seed(seed)
    out: list[list[int]] = []
    for _ in range(epochs):
        out += _rank_batches(torch.randperm(n, generator=g).tolist(), batch_size, rank, world_size)
    return out
