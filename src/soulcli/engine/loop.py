"""The one training loop that ``finetune`` and ``unlearn`` share.

Per step: curvature hook (second-order optimizers), loss and backward, gradient clipping,
empirical-Fisher hook, optimizer step, diagnostics, scheduler; a metrics row per logged step.

On a Gauss-Newton-Bartlett step the estimator takes its sample from the logits the objective's
own forward produced (``curvature_parts`` names the batches it covers; a batch the objective
did not forward is forwarded by the estimator), so curvature costs one extra backward, not a
forward and a backward. Estimators without ``shares_forward`` (Hutchinson, wrapped
distributed estimators) run before the loss on ``curvature_batch``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from soulcli.engine.progress import Reporter
from soulcli.objectives.logprobs import tap_logits


@dataclass
class LoopResult:
    steps: int
    seconds: float
    tokens: int
    last: dict[str, Any]
    rows: list[dict[str, Any]]


def make_scheduler(optimizer, kind: str, total_steps: int, warmup_steps: int = 0,
                   min_ratio: float = 0.0):
    """constant | linear | cosine decay after a linear warmup (multiplies each group's lr)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if kind == "linear":
            return min_ratio + (1 - min_ratio) * (1 - progress)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_loop(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    num_steps: int,
    compute_loss: Callable[[int], tuple[torch.Tensor, dict[str, float], int]],
    *,
    reporter: Reporter,
    description: str,
    scheduler=None,
    curvature=None,
    curvature_batch: Callable[[int], dict[str, torch.Tensor]] | None = None,
    curvature_parts: Callable[[int], list[dict[str, torch.Tensor]]] | None = None,
    hessian_interval: int = 10,
    max_grad_norm: float | None = None,
    log_every: int = 1,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    on_step_end: Callable[[int], None] | None = None,
) -> LoopResult:
    """Run ``num_steps`` steps. ``compute_loss(step)`` returns (loss, terms, n_tokens)."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    rows: list[dict[str, Any]] = []
    tokens = 0
    start = time.perf_counter()
    last: dict[str, Any] = {}
    with reporter.task(description, num_steps) as task:
        for step in range(num_steps):
            t0 = time.perf_counter()
            diag: dict[str, float] = {}
            shared = (curvature is not None and curvature_parts is not None
                      and getattr(curvature, "shares_forward", False))
            if curvature is not None and not shared:
                diag.update(curvature.before_backward(step, model, curvature_batch(step),
                                                      optimizer, hessian_interval) or {})
            if shared and step % hessian_interval == 0:
                with tap_logits() as taps:
                    loss, terms, n_tok = compute_loss(step)
                parts = [(data, next((lg for d, lg in taps if d is data), None))
                         for data in curvature_parts(step)]
                del taps
                diag.update(curvature.after_forward(step, model, parts, optimizer,
                                                    hessian_interval) or {})
                del parts
            else:
                loss, terms, n_tok = compute_loss(step)
            loss.backward()
            if max_grad_norm is not None:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
            else:
                grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
            if curvature is not None:
                diag.update(curvature.after_backward(step, optimizer, hessian_interval) or {})
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            if hasattr(optimizer, "diagnostics"):
                diag.update(optimizer.diagnostics() or {})
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            tokens += n_tok
            loss_value = float(loss.detach())
            step_seconds = time.perf_counter() - t0
            last = {"step": step + 1, "loss": loss_value, **terms, "lr": lr, "grad_norm": grad_norm,
                    **diag, "step_seconds": step_seconds,
                    "seconds": time.perf_counter() - start}
            if (step + 1) % log_every == 0 or step + 1 == num_steps:
                rows.append(last)
                if on_row is not None:
                    on_row(last)
            if not math.isfinite(loss_value):
                reporter.info(f"[yellow]warning:[/] the loss became {loss_value} at step {step + 1}; "
                              "lower the learning rate")
            task.update(1, loss=loss_value, **{k: v for k, v in terms.items() if isinstance(v, float)})
            if on_step_end is not None:
                on_step_end(step + 1)
                model.train()
    return LoopResult(num_steps, time.perf_counter() - start, tokens, last, rows)
