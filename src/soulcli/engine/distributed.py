"""torch.distributed for `soul finetune` and `soul unlearn` under torchrun: DDP or FSDP2.

Launch with ``torchrun --nproc_per_node N -m soulcli.cli unlearn --recipe ...`` (gloo on CPU,
NCCL on GPUs); ``train.strategy`` picks how the model is spread: ``ddp`` (a replica per rank,
gradients averaged) or ``fsdp`` (``torch.distributed.fsdp.fully_shard``: every decoder layer and
the root sharded, parameters and optimizer state held as DTensor shards; soulcli's optimizers
are elementwise, so they step the local shards).

Each rank takes its slice of every step's global batch (engine.sampling). N ranks reproduce one
process with the same global batch: each rank's loss is scaled by ``N * c_r / C``, its share of
the step's global counts ``C`` (:func:`global_totals`) times N, because both strategies average
the ranks' gradients, so the reduced gradient is that of the global token mean; the logged loss
and terms are the ranks' mean of the same scaled values (:func:`mean_over_ranks`), which is that
global mean too. The GNB curvature sample is drawn as for the global batch (every rank draws the
step's uniforms and takes its slices) and reduced by the strategy's own backward; Hutchinson
diagonals (DDP only: a double backward does not reach FSDP's shards) are averaged; the empirical
Fisher reads the reduced gradients with the global token count. ``DistributedCurvature`` is
itself a curvature estimator, so the training step does not know it runs distributed. Only rank
0 writes and prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from soulcli.errors import UserError
from soulcli.optim.curvature import CurvatureEstimator, Part, Placement, answer_tokens


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local), device


def wrap_model(model: torch.nn.Module, ctx: DistContext, device: torch.device,
               strategy: str = "ddp") -> torch.nn.Module:
    """The model the steps run: ``model`` itself in one process; under torchrun a DDP wrapper
    (``model`` stays the plain replica) or, for ``fsdp``, ``model`` sharded in place with
    ``fully_shard``: each of its decoder layers (the classes Hugging Face lists in
    ``_no_split_modules``), then the root."""
    if not ctx.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        blocks = next((set(m._no_split_modules) for m in model.modules()
                       if getattr(m, "_no_split_modules", None)), set())
        for module in [m for m in model.modules() if type(m).__name__ in blocks]:
            fully_shard(module)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=True)


def sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds FSDP2 (DTensor) parameters."""
    return any(hasattr(p, "to_local") for p in model.parameters())


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on CPU, on rank 0 (empty elsewhere); every rank must call
    it (the shards are gathered)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def global_totals(counts: torch.Tensor, world_size: int) -> torch.Tensor:
    """``counts`` (any shape, e.g. ``[steps, 2]``: each step's forget and retain counts on this
    rank) summed over the ``world_size`` ranks (itself for one)."""
    if world_size == 1:
        return counts
    counts = counts.clone()
    dist.all_reduce(counts)
    return counts


def mean_over_ranks(values: Sequence[float], device: torch.device) -> list[float]:
    """The ranks' mean of each value."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def strategy_gradients(world_size: int) -> Callable[[Sequence[Callable[[], torch.Tensor]], list[torch.Tensor]],
                                                    list[torch.Tensor | None]]:
    """The curvature sample's gradients by the wrapped model's own backward (DDP's all-reduce,
    FSDP's reduce-scatter: both average the ranks, hence the factor ``world_size``), with
    ``p.grad`` put back as it was: the sum over ranks of each rank's summed losses, as a
    replica (DDP) or this rank's shards (FSDP)."""

    def gradients(losses: Sequence[Callable[[], torch.Tensor]], params: list[torch.Tensor]):
        saved = [p.grad for p in params]
        for p in params:
            p.grad = None
        for loss in losses:
            (loss() * world_size).backward()
        grads = [p.grad for p in params]
        for p, g in zip(params, saved):
            p.grad = g
        return grads

    return gradients


class _Capture:
    """Stands in for the optimizer while a rank computes its local curvature sample."""

    def __init__(self, opt: torch.optim.Optimizer):
        self.param_groups = opt.param_groups
        self.call: dict[str, Any] | None = None

    def update_hessian(self, bs: int | None = None, *, grads: Sequence[torch.Tensor | None] | None = None,
                       diagonal: Sequence[torch.Tensor | None] | None = None) -> None:
        self.call = {"bs": bs, "diagonal": diagonal}


class DistributedCurvature:
    """A :class:`~soulcli.optim.curvature.CurvatureEstimator` wrapping another, so that all
    ranks fold the same estimate into their optimizer state (see the module docstring).

    Under torchrun every step is given as micro-batches (their shares scaled for the ranks), so
    the loop calls :meth:`estimate_accumulated` after the loss's backwards."""

    def __init__(self, estimator: CurvatureEstimator, ctx: DistContext, strategy: str = "ddp"):
        self.inner, self.ctx = estimator, ctx
        kind = getattr(estimator, "kind", "")
        if strategy == "fsdp" and kind == "hutchinson":
            raise UserError("the Hutchinson curvature (sophiah, adahessian) does not run with "
                            "train.strategy: fsdp (its double backward does not reach the sharded "
                            "parameters); use train.strategy: ddp, or sophiag (GNB)")

    def estimate(self, model: torch.nn.Module, parts: Sequence[Part], opt) -> dict[str, float]:
        return self.estimate_accumulated(model, [parts], opt)

    def estimate_accumulated(self, model: torch.nn.Module, micro: Sequence[Sequence[Part]],
                             opt) -> dict[str, float]:
        """GNB: the global batch's sample (every rank's micro-batches placed rank after rank);
        Hutchinson (one micro-batch): this rank's diagonal on the plain replica, averaged."""
        kind = getattr(self.inner, "kind", "")
        if kind == "gnb":
            counts = [[answer_tokens(data) for data, _ in parts] for parts in micro]
            every: list[Any] = [None] * self.ctx.world_size
            dist.all_gather_object(every, counts)
            placement = Placement([c for rank in every for c in rank],
                                  sum(len(rank) for rank in every[: self.ctx.rank]))
            return self.inner.estimate_accumulated(  # type: ignore[attr-defined]
                model, micro, opt, placement, strategy_gradients(self.ctx.world_size))
        if kind != "hutchinson":  # the empirical Fisher reads p.grad after the backward
            return {}
        proxy = _Capture(opt)
        raw = getattr(model, "module", model)
        diag = self.inner.estimate(raw, [(data, None) for data, _ in micro[0]], proxy)
        device = micro[0][0][0]["input_ids"].device
        return {**diag, **self._reduce_and_apply(proxy, opt, device)}

    def _reduce_and_apply(self, proxy: _Capture, opt: torch.optim.Optimizer, device) -> dict[str, float]:
        call = proxy.call or {"bs": 0, "diagonal": None}
        local_bs = float(call["bs"] or 0)
        total = torch.tensor([local_bs], device=device, dtype=torch.float64)
        dist.all_reduce(total)
        global_bs = int(total.item())
        if call["diagonal"] is not None:  # Hutchinson: the ranks' mean diagonal
            diag = []
            for t in call["diagonal"]:
                if t is not None:
                    t = t.detach().clone() / self.ctx.world_size
                    dist.all_reduce(t)
                diag.append(t)
            opt.update_hessian(bs=global_bs or None, diagonal=diag)
        else:  # the empirical Fisher reads p.grad, which the strategy already reduced
            opt.update_hessian(bs=global_bs or None)
        return {"curvature_tokens": float(global_bs)} if global_bs else {}

    def after_backward(self, parts: Sequence[Part], opt) -> dict[str, float]:
        proxy = _Capture(opt)
        diag = self.inner.after_backward(parts, proxy)
        if proxy.call is None:
            return diag
        device = next(p for g in opt.param_groups for p in g["params"]).device
        return {**diag, **self._reduce_and_apply(proxy, opt, device)}
