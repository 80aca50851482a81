"""FSDP2-style parameters (DTensor shards): every optimizer works on the local shard alone."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from soulcli.optim import OPTIMIZERS, build_optimizer

pytest.importorskip("torch.distributed.tensor")
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.tensor import Shard, distribute_tensor  # noqa: E402


@pytest.fixture(scope="module")
def mesh():
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs a fresh single-process gloo group")
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_sharded_parameters_step_like_plain_ones(mesh, name):
    torch.manual_seed(0)
    start = torch.randn(6, 4)
    sharded = torch.nn.Parameter(distribute_tensor(start.clone(), mesh, [Shard(0)]))
    plain = torch.nn.Parameter(start.clone())
    opts = [build_optimizer(name, [sharded], lr=0.01, weight_decay=0.01),
            build_optimizer(name, [plain], lr=0.01, weight_decay=0.01)]
    for _ in range(3):
        g = torch.randn(6, 4)
        sharded.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
        plain.grad = g.clone()
        for opt, curvature in zip(opts, [distribute_tensor(g.abs(), mesh, [Shard(0)]), g.abs()]):
            if opt.default_curvature == "gnb":
                opt.update_hessian(bs=4)
            elif opt.default_curvature == "hutchinson":
                opt.update_hessian(diagonal=[curvature])
            # a zeroth-order method reads the linear loss <p, g> whose gradient is g
            p = opt.param_groups[0]["params"][0]
            opt.step((lambda: (p.full_tensor() if p is sharded else p).mul(g).sum())
                     if opt.zeroth_order else None)
    assert type(sharded.data).__name__ == "DTensor"
    assert torch.equal(sharded.full_tensor(), plain.detach())
