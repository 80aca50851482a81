"""Batch plans, fixed before training so reference quantities can be cached in advance.

* Forget items: a fresh permutation each epoch, cut into batches, so every forget item is seen
  exactly once per epoch (per rank: each rank takes its own shard of the permutation; with N
  ranks the permutation is wrapped to a multiple of N so all ranks take the same steps).
* Retain items: for each step a sample without replacement from a stream of permutations that
  depends on (seed, rank), so the retain sample differs across steps and across ranks.
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
        perm = torch.randperm(n_forget, generator=g).tolist()
        # every rank must take the same number of steps (DDP): wrap the permutation so its
        # length divides by world_size (at most world_size - 1 items seen twice per epoch)
        perm += perm[: (-len(perm)) % world_size]
        shard = perm[rank::world_size]  # same permutation on every rank, disjoint shards
        steps += [StepPlan(shard[i: i + batch_size], None) for i in range(0, len(shard), batch_size)]
    if max_steps is not None:
        steps = steps[:max_steps]
    if not use_retain or n_retain == 0:
        return steps
    rg = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (rank + 1))
    pool: list[int] = []
    out = []
    for st in steps:
        take: list[int] = []
        while len(take) < retain_batch_size:
            if not pool:
                pool = torch.randperm(n_retain, generator=rg).tolist()
            take.append(pool.pop())
        out.append(StepPlan(st.forget, take))
    return out


def split(indices: list[int], n: int) -> list[list[int]]:
    """``indices`` cut into ``min(n, len)`` consecutive pieces whose sizes differ by at most one
    (the micro-batches of a step: ``n`` pieces of ``size`` when ``len == n * size``)."""
    n = max(1, min(n, len(indices)))
    size, extra = divmod(len(indices), n)
    bounds = [k * size + min(k, extra) for k in range(n + 1)]
    return [indices[a:b] for a, b in zip(bounds, bounds[1:])]


def epoch_batches(n: int, batch_size: int, epochs: int, seed: int, rank: int = 0,
                  world_size: int = 1) -> list[list[int]]:
    """Shuffled batches for ordinary training (finetune), one permutation per epoch."""
    g = torch.Generator().manual_seed(seed)
    out: list[list[int]] = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).tolist()[rank::world_size]
        out += [perm[i: i + batch_size] for i in range(0, len(perm), batch_size)]
    return out
