"""Under torchrun a non-finite loss on one rank stops (or skips) the step on every rank: no rank
is left waiting in the gradient all-reduce (2 gloo processes, each deciding on its own loss)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from soulcli.engine.loop import _finite
from soulcli.errors import DivergedError


def _rank(rank: int, store: str, policy: str, out: str) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"file://{store}")
    model = torch.nn.Linear(2, 2)
    run = SimpleNamespace(on_nonfinite=policy, model=model, distributed=True,
                          optimizer=torch.optim.SGD(model.parameters(), lr=0.5))
    loss = float("nan") if rank == 1 else 1.25
    try:
        result = {"finite": _finite(run, "loss", loss, 3, "nothing saved", local=True)}
    except DivergedError as exc:
        result = {"error": str(exc)}
    # both ranks reach this collective only if neither was left behind
    flag = torch.ones(1)
    dist.all_reduce(flag)
    result["after"] = flag.item()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_one_ranks_nonfinite_loss_is_every_ranks(tmp_path, policy):
    out = str(tmp_path / "result")
    mp.spawn(_rank, args=(str(tmp_path / "store"), policy, out), nprocs=2, join=True)
    results = [json.loads(open(f"{out}.{r}").read()) for r in (0, 1)]
    assert all(r["after"] == 2.0 for r in results)
    if policy == "skip":
        assert [r["finite"] for r in results] == [False, False]
    else:
        assert results[0]["error"] == ("the loss of another rank became nan at step 3 (lr 0.5); nothing saved: "
                                       "lower the learning rate (or max_grad_norm), or set on_nonfinite: skip")
        assert results[1]["error"].startswith("the loss became nan at step 3")
