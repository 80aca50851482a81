"""2 gloo processes reproduce 1 process with the same global batch (DDP and FSDP2, AdamW and
SophiaG + GNB refreshed every step): the logged loss is the global token mean and the final
weights are the one process's.

Each rank takes half of every step's forget and retain rows (rank 0's first, as
engine.sampling slices them); the items have unequal answer lengths, so a mean of the ranks'
means would differ.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_llama_helpers import FORGET, PLAN, QUIET, RETAIN, batch, tiny_llama

from soulcli.engine.distributed import (DistContext, DistributedCurvature, full_state_dict, global_totals,
                                        wrap_model)
from soulcli.engine.loop import MicroBatches, Training, train
from soulcli.engine.sampling import split
from soulcli.objectives import UnlearnBatch, build_objective
from soulcli.objectives.base import with_shares
from soulcli.optim import build_curvature, build_optimizer

COMBINATIONS = [(s, o) for s in ("ddp", "fsdp") for o in ("adamw", "sophiag")]


def run(optimizer: str, strategy: str | None, ctx: DistContext = DistContext()):
    """The three steps of PLAN on this rank (all of each step in one process); the rows and,
    on rank 0, the final full state dict."""
    objective = build_objective("graddiff")
    if ctx.enabled:
        local = [[UnlearnBatch(batch(FORGET, split(f, 2)[ctx.rank]), batch(RETAIN, split(r, 2)[ctx.rank]))]
                 for f, r in PLAN]
        counts = torch.tensor([list(objective.counts(micro[0])) for micro in local])
        steps = [MicroBatches(with_shares(objective, micro, tuple(t), ctx.world_size))
                 for micro, t in zip(local, global_totals(counts, ctx.world_size).tolist())]
    else:
        steps = [UnlearnBatch(batch(FORGET, f), batch(RETAIN, r)) for f, r in PLAN]
    model = tiny_llama()
    wrapped = wrap_model(model, ctx, torch.device("cpu"), strategy or "ddp")
    # rho 10, eps 1e-3 as in test_core_accumulation: nearly every coordinate takes the curvature
    # step, so the update depends on the reduced GNB sample and its bs everywhere
    args = {"rho": 10.0, "eps": 1e-3} if optimizer == "sophiag" else {}
    opt = build_optimizer(optimizer, list(model.parameters()), lr=1e-2, **args)
    curvature = build_curvature("gnb", seed=3) if optimizer == "sophiag" else None
    if curvature is not None and ctx.enabled:
        curvature = DistributedCurvature(curvature, ctx, strategy or "ddp")
    result = train(Training(wrapped, opt, objective, curvature=curvature, hessian_interval=1, max_grad_norm=1.0,
                            distributed=ctx.enabled),
                   steps, len(PLAN), QUIET, "t")
    state = full_state_dict(model) if strategy == "fsdp" else model.state_dict()
    return result.rows, state


def _rank(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"file://{store}")
    torch.set_num_threads(1)
    ctx = DistContext(rank, 2, rank)
    for strategy, optimizer in COMBINATIONS:
        rows, state = run(optimizer, strategy, ctx)
        if rank == 0:  # only rank 0 holds the gathered weights
            torch.save({"rows": rows, "state": state}, f"{out}-{strategy}-{optimizer}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank, args=(str(tmp / "store"), str(tmp / "run")), nprocs=2, join=True)
    return {c: torch.load(f"{tmp / 'run'}-{c[0]}-{c[1]}.pt") for c in COMBINATIONS}


@pytest.mark.parametrize("strategy,optimizer", COMBINATIONS)
def test_two_ranks_reproduce_one_process(two_ranks, strategy, optimizer):
    rows, state = run(optimizer, None)
    got = two_ranks[(strategy, optimizer)]
    start = tiny_llama().state_dict()
    assert max(float((state[k] - start[k]).abs().max()) for k in state) > 1e-3  # the steps moved the weights
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(rows, got["rows"]))
    weight_diff = max(float((state[k] - got["state"][k]).abs().max()) for k in state)
    print(json.dumps({"strategy": strategy, "optimizer": optimizer, "loss_diff": loss_diff,
                      "weight_diff": weight_diff}))
    assert loss_diff <= 1e-5 and weight_diff <= 1e-5
    for a, b in zip(rows, got["rows"]):
        assert a["forget_loss"] == pytest.approx(b["forget_loss"], rel=1e-5)
        assert a["retain_loss"] == pytest.approx(b["retain_loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        if optimizer == "sophiag":
            assert a["curvature_tokens"] == b["curvature_tokens"] > 0
            assert a["hessian_norm"] == pytest.approx(b["hessian_norm"], rel=1e-5)
