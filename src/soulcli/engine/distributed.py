"""torch.distributed for `soul unlearn` under torchrun: DDP for the loss, one curvature for all.

Launch with ``torchrun --nproc_per_node N -m soulcli.cli unlearn --recipe ...`` (gloo on CPU,
NCCL on GPUs). Each rank takes its own shard of every forget epoch and its own retain stream
(engine.sampling); DDP averages the loss gradients. Curvature estimates are computed per rank on
the unwrapped model and reduced so every rank folds the same estimate into its optimizer state:
sampled-label gradients are token-weighted averages with ``bs`` = the global token count (the
GNB estimate of the whole global batch); Hutchinson diagonals are averaged; empirical Fisher
uses DDP's averaged gradients with the global token count. ``DistributedCurvature`` is itself a
curvature estimator, so the training step does not know it runs distributed. Only rank 0 writes the run folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist

from soulcli.optim.curvature import CurvatureEstimator, Part


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


def wrap_model(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=True)


class _Capture:
    """Stands in for the optimizer while a rank computes its local curvature sample."""

    def __init__(self, opt: torch.optim.Optimizer):
        self.param_groups = opt.param_groups
        self.call: dict[str, Any] | None = None

    def update_hessian(self, bs: int | None = None, *, grads: Sequence[torch.Tensor | None] | None = None,
                       diagonal: Sequence[torch.Tensor | None] | None = None) -> None:
        self.call = {"bs": bs, "grads": grads, "diagonal": diagonal}


def _all_reduce_list(tensors: Sequence[torch.Tensor | None], scale: float) -> list[torch.Tensor | None]:
    out = []
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        t = t.detach().clone() * scale
        dist.all_reduce(t)
        out.append(t)
    return out


class DistributedCurvature:
    """A :class:`~soulcli.optim.curvature.CurvatureEstimator` wrapping another, so that all
    ranks fold the same estimate into their optimizer state.

    The inner estimator runs on the unwrapped model with the parts' logits dropped: it
    forwards the parts itself, outside DDP, so DDP's gradient hooks never see its backward.
    """

    def __init__(self, estimator: CurvatureEstimator, ctx: DistContext):
        self.inner, self.ctx = estimator, ctx

    def _reduce_and_apply(self, proxy: _Capture, opt: torch.optim.Optimizer, device) -> dict[str, float]:
        call = proxy.call
        if call is None:
            return {}
        local_bs = float(call["bs"] or 0)
        total = torch.tensor([local_bs], device=device, dtype=torch.float64)
        dist.all_reduce(total)
        global_bs = int(total.item())
        if call["grads"] is not None:  # token-weighted mean of the ranks' sampled-label gradients
            grads = _all_reduce_list(call["grads"], local_bs / max(global_bs, 1))
            opt.update_hessian(bs=global_bs, grads=grads)
        elif call["diagonal"] is not None:
            diag = _all_reduce_list(call["diagonal"], 1.0 / self.ctx.world_size)
            opt.update_hessian(bs=global_bs or None, diagonal=diag)
        else:  # estimators reading p.grad, which DDP already averaged
            opt.update_hessian(bs=global_bs or None)
        return {"curvature_tokens": float(global_bs)} if global_bs else {}

    def estimate(self, model: torch.nn.Module, parts: Sequence[Part], opt) -> dict[str, float]:
        return self._sample(lambda raw, proxy: self.inner.estimate(
            raw, [(data, None) for data, _ in parts], proxy), model, parts[0][0], opt)

    def estimate_accumulated(self, model: torch.nn.Module, micro: Sequence[Sequence[Part]],
                             opt) -> dict[str, float]:
        """The inner estimate over this rank's micro-batches, reduced as :meth:`estimate`'s."""
        return self._sample(lambda raw, proxy: self.inner.estimate_accumulated(raw, micro, proxy),
                            model, micro[0][0][0], opt)

    def _sample(self, run, model: torch.nn.Module, batch, opt) -> dict[str, float]:
        proxy = _Capture(opt)
        diag = run(getattr(model, "module", model), proxy)
        device = batch["input_ids"].device
        flag = torch.tensor([1.0 if proxy.call is not None else 0.0], device=device)
        dist.all_reduce(flag)  # every rank takes part in the reductions, or none does
        if flag.item() == 0:
            return diag
        if proxy.call is None:  # this rank had no answer tokens: it contributes zeros
            params = [p for g in opt.param_groups for p in g["params"]]
            proxy.call = {"bs": 0, "grads": [torch.zeros_like(p) for p in params], "diagonal": None}
        return {**diag, **self._reduce_and_apply(proxy, opt, device)}

    def after_backward(self, parts: Sequence[Part], opt) -> dict[str, float]:
        proxy = _Capture(opt)
        diag = self.inner.after_backward(parts, proxy)
        if proxy.call is None:
            return diag
        device = next(p for g in opt.param_groups for p in g["params"]).device
        return {**diag, **self._reduce_and_apply(proxy, opt, device)}
