"""The one training loop that ``finetune`` and ``unlearn`` share, written out step by step.

A step: the forward returns its loss, its logged terms and the logits it computed (with the
batches they belong to); every ``hessian_interval`` steps the curvature estimator takes its
sample from those logits (one extra backward, no extra forward); backward; clip; the
estimator's after-backward part (the empirical Fisher reads ``p.grad``); optimizer step;
diagnostics; scheduler; a metrics row. A step given as :class:`MicroBatches` (gradient
accumulation) forwards and backwards each in turn, then takes the curvature sample of them all
(``estimate_accumulated``); ``Training.autocast`` runs the forwards under autocast
(``train.precision: bf16-mixed``). A zeroth-order optimizer (``zeroth_order``: MeZO) takes
the forward as a loss closure instead, runs it twice without a graph and needs no backward. A non-finite loss (checked before the curvature sample,
which would carry it into the optimizer's state) or gradient norm stops the run with
:class:`~soulcli.errors.DivergedError`, or, with ``on_nonfinite="skip"``, drops that step's
update and counts it. With checkpoints on, every ``save_every`` steps the run's whole state is
written (:mod:`soulcli.engine.checkpoint`) so that ``--resume`` continues it bit for bit. The
curvature calls are explicit lines through the small
:class:`~soulcli.optim.curvature.CurvatureEstimator` protocol, as in the Sophia authors'
nanoGPT loop.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterable, Protocol

import torch

from soulcli.engine import checkpoint
from soulcli.engine.checkpoint import Checkpoints
from soulcli.engine.distributed import mean_over_ranks
from soulcli.engine.progress import Reporter
from soulcli.errors import DivergedError, Interrupted
from soulcli.optim.curvature import CurvatureEstimator, Part


class StepOutput(Protocol):
    """What a forward gives the step (a dataclass: ``soulcli.objectives.ObjectiveOutput``)."""

    loss: torch.Tensor
    terms: dict[str, float]
    logits: list[Part]  # the batches trained on, with the logits computed for them (or None)


@dataclass
class Training:
    """Everything a run of steps needs besides its batches."""

    model: torch.nn.Module  # what the forward runs (DDP-wrapped under torchrun)
    optimizer: torch.optim.Optimizer
    forward: Callable[[torch.nn.Module, Any], StepOutput]  # (model, batch) -> its loss
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    curvature: CurvatureEstimator | None = None
    hessian_interval: int = 10
    max_grad_norm: float | None = None
    log_every: int = 1
    on_nonfinite: str = "stop"  # stop: raise DivergedError; skip: no update for that step
    checkpoints: Checkpoints | None = None  # write / resume checkpoints (engine.checkpoint)
    autocast: torch.dtype | None = None  # the forward's autocast dtype (train.precision bf16-mixed)
    # the ranks of torchrun train together: the logged loss and the finite checks are theirs
    distributed: bool = False


@dataclass
class LoopResult:
    """What the loop has done (also the record a checkpoint carries)."""

    steps: int
    seconds: float
    tokens: int
    last: dict[str, Any]
    rows: list[dict[str, Any]]
    skipped: int = 0  # steps dropped for a non-finite loss or gradient (on_nonfinite: skip)


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


def _finite(run: Training, name: str, value: float, step: int, kept: str, local: bool = False) -> bool:
    """Whether ``value`` is finite; if not, raise DivergedError unless ``on_nonfinite`` is skip
    (``kept``: what a divergence leaves on disk). A ``local`` value (a rank's own loss under
    torchrun) is decided by every rank together, so a non-finite loss on one rank stops or skips
    the step on all of them instead of leaving the others waiting in the gradient all-reduce."""
    finite = math.isfinite(value)
    if local and run.distributed:
        flag = torch.tensor([1.0 if finite else 0.0], device=next(run.model.parameters()).device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        if finite and not flag.item():
            value, name = float("nan"), f"{name} of another rank"
        finite = bool(flag.item())
    if finite:
        return True
    if run.on_nonfinite == "stop":
        raise DivergedError(
            f"the {name} became {value} at step {step} (lr {run.optimizer.param_groups[0]['lr']:g}); "
            f"{kept}: lower the learning rate (or max_grad_norm), or set on_nonfinite: skip")
    return False


class MicroBatches(list):
    """One step's batch given as micro-batches (gradient accumulation, ``grad_accum``; under
    torchrun every step, one micro-batch or more): each is forwarded and backwarded in turn
    (DDP syncs the gradients on the last only, FSDP reduce-scatters each), so the memory is that
    of one. The forward must give each micro-batch's loss as its share of the step's loss (its
    terms likewise): the loop sums them, so the step is the larger batch's."""


def _autocast(run: Training):
    """The forward's autocast context (``run.autocast``: bf16-mixed), or none."""
    if run.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(next(run.model.parameters()).device.type, dtype=run.autocast)


def _accumulate(run: Training, micro: MicroBatches) -> tuple[StepOutput, list[list[Part]]]:
    """Forward and backward each micro-batch; the step's output: the summed losses and terms,
    and every micro-batch's parts (their logits dropped, each graph freed after its backward);
    then those parts per micro-batch."""
    outs, parts = [], []
    for k, batch in enumerate(micro):
        last = k == len(micro) - 1
        with (contextlib.nullcontext() if last or not hasattr(run.model, "no_sync") else run.model.no_sync()):
            with _autocast(run):
                out = run.forward(run.model, batch)
            out.loss.backward()
        outs.append(replace(out, loss=out.loss.detach(), logits=[]))  # type: ignore[type-var]
        parts.append([(data, None) for data, _ in out.logits])
        del out
    terms = {key: sum(o.terms[key] for o in outs) if isinstance(value, float) else value
             for key, value in outs[-1].terms.items()}
    return replace(outs[-1], loss=sum(o.loss for o in outs), terms=terms,  # type: ignore[type-var]
                   logits=[p for ps in parts for p in ps]), parts


def _logged(run: Training, out: StepOutput) -> tuple[float, dict[str, Any]]:
    """The step's loss and terms as logged: under torchrun the ranks' mean of their scaled
    values (engine.distributed), which is the global batch's."""
    names = [k for k, v in out.terms.items() if isinstance(v, float)]
    values = [float(out.loss.detach()), *(out.terms[k] for k in names)]
    if run.distributed:
        values = mean_over_ranks(values, next(run.model.parameters()).device)
    return values[0], {**out.terms, **dict(zip(names, values[1:]))}


def _update(run: Training, batch: Any, params: list[torch.nn.Parameter],
            step: int, kept: str) -> tuple[StepOutput, tuple[float, dict[str, float]] | None]:
    """The step on ``batch`` (one, or :class:`MicroBatches`): its forward output and (grad norm,
    diagnostics), or None when the loss or the gradient is not finite and ``run.on_nonfinite``
    is ``skip``. One batch gives the curvature sample from its forward's logits before its
    backward; micro-batches give theirs after all the backwards, drawn as for one batch of them
    all (``estimate_accumulated``: it forwards them again, once per curvature step)."""
    opt, curvature = run.optimizer, run.curvature
    sample = curvature is not None and (step - 1) % run.hessian_interval == 0
    diag: dict[str, float] = {}
    if isinstance(batch, MicroBatches):
        out, micro_parts = _accumulate(run, batch)
        if not _finite(run, "loss", float(out.loss), step, kept, local=True):
            return out, None
        if sample:
            with _autocast(run):
                diag |= curvature.estimate_accumulated(run.model, micro_parts, opt)  # type: ignore[union-attr]
    else:
        with _autocast(run):
            out = run.forward(run.model, batch)
        if not _finite(run, "loss", float(out.loss.detach()), step, kept, local=True):
            return out, None
        if sample:
            with _autocast(run):
                diag |= curvature.estimate(run.model, out.logits, opt)  # type: ignore[union-attr]
        out.loss.backward()
    if run.max_grad_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, run.max_grad_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor
    if not _finite(run, "gradient norm", grad_norm, step, kept):
        return out, None
    if curvature is not None:
        diag |= curvature.after_backward(out.logits, opt)
    opt.step()
    if hasattr(opt, "diagnostics"):
        diag |= opt.diagnostics() or {}
    return out, (grad_norm, diag)


def _zeroth_order_update(run: Training, batch: Any, step: int,
                         kept: str) -> tuple[StepOutput, tuple[float, dict[str, float]] | None]:
    """A zeroth-order step (:mod:`soulcli.optim.zo`, MeZO): the forward runs twice without a
    graph, at theta + eps*z and theta - eps*z, and no backward; the row logs their mean loss and
    terms (the loss at theta up to O(eps**2)), and clipping scales the estimate ``g * z``."""
    opt, outs = run.optimizer, []

    def loss() -> torch.Tensor:
        outs.append(run.forward(run.model, batch))
        return outs[-1].loss

    mean_loss, grad_norm = opt.estimate(loss)  # type: ignore[attr-defined]
    plus, minus = outs
    terms = {k: (v + minus.terms[k]) / 2 if isinstance(v, float) else v for k, v in plus.terms.items()}
    out = replace(plus, loss=mean_loss, terms=terms)  # type: ignore[type-var]
    if not (_finite(run, "loss", float(mean_loss), step, kept)
            and _finite(run, "gradient estimate's norm", grad_norm, step, kept)):
        return out, None
    if run.max_grad_norm is not None:
        opt.clip_estimate(run.max_grad_norm)  # type: ignore[attr-defined]
    opt.step()
    return out, (grad_norm, opt.diagnostics())  # type: ignore[attr-defined]


def train(run: Training, batches: Iterable[Any], num_steps: int, reporter: Reporter,
          description: str, on_row: Callable[[dict[str, Any]], None] | None = None,
          on_step_end: Callable[[int], None] | None = None) -> LoopResult:
    """Take one step per batch (``num_steps`` of them); ``on_row`` gets each logged row,
    ``on_step_end`` the number of steps done (the model is put back in train mode after); an
    ``on_step_end`` with ``state_dict()`` / ``load_state_dict()`` has its state checkpointed
    with the run's.

    With ``run.checkpoints`` a run resumed from a checkpoint skips the batches it took (the
    checkpoint's rows go to ``on_row`` first), one is written every ``every`` steps, and a
    SIGINT stops the run after the current step with a checkpoint of it
    (:class:`~soulcli.errors.Interrupted`).
    """
    model, opt, ckpt = run.model, run.optimizer, run.checkpoints
    params = [p for p in model.parameters() if p.requires_grad]
    hook = on_step_end if hasattr(on_step_end, "state_dict") else None
    model.train()
    done = LoopResult(0, 0.0, 0, {}, [])
    if ckpt is not None and ckpt.resume_from is not None:
        done = LoopResult(**checkpoint.load(ckpt.resume_from, model, opt, run.scheduler, run.curvature,
                                                 hook))
        reporter.info(f"Resuming from {ckpt.resume_from} (step {done.steps} of {num_steps})")
        for row in done.rows if on_row is not None else ():
            on_row(row)
    kept, start = "nothing was saved", time.perf_counter() - done.seconds
    with reporter.task(description, num_steps) as task, checkpoint.deferred_sigint(
            ckpt is not None and ckpt.every > 0) as sigint:
        task.update(done.steps)
        for step, batch in enumerate(itertools.islice(batches, done.steps, None), done.steps):
            t0 = time.perf_counter()
            lr = opt.param_groups[0]["lr"]
            if getattr(opt, "zeroth_order", False):
                with torch.no_grad():
                    out, update = _zeroth_order_update(run, batch, step + 1, kept)
            else:
                out, update = _update(run, batch, params, step + 1, kept)
            opt.zero_grad(set_to_none=True)
            if run.scheduler is not None:
                run.scheduler.step()
            done.tokens += sum(int(data["attention_mask"].sum()) for data, _ in out.logits)
            loss, terms = _logged(run, out)
            del out  # the step's graph and logits
            done.skipped += update is None
            if update is None and done.skipped == 1:
                reporter.info(f"[yellow]warning:[/] step {step + 1} skipped: non-finite loss or gradient "
                              "(no update; every skipped step is counted in the run's summary)")
            grad_norm, diag = update or (math.nan, {"skipped": 1})
            done.last = {"step": step + 1, "loss": loss, **terms, "lr": lr, "grad_norm": grad_norm,
                         **diag, "step_seconds": time.perf_counter() - t0,
                         "seconds": time.perf_counter() - start}
            if (step + 1) % run.log_every == 0 or step + 1 == num_steps:
                done.rows.append(done.last)
                if on_row is not None:
                    on_row(done.last)
            task.update(1, loss=loss, **{k: v for k, v in terms.items() if isinstance(v, float)})
            if on_step_end is not None:
                on_step_end(step + 1)
                model.train()
            done.steps, done.seconds = step + 1, time.perf_counter() - start
            if ckpt is not None and ((ckpt.every and (step + 1) % ckpt.every == 0) or sigint.is_set()):
                saved = checkpoint.save(ckpt, step + 1, num_steps, model, opt, run.scheduler,
                                        run.curvature, asdict(done), hook)
                kept = f"the checkpoint of step {step + 1} is kept in {saved}"
                if sigint.is_set():
                    raise Interrupted(step + 1, str(saved))
    if not all(bool(torch.isfinite(p).all()) for p in params):  # a finite step can still overflow
        raise DivergedError(f"the parameters are not finite after the last step; {kept}: "
                            "lower the learning rate")
    done.seconds = time.perf_counter() - start
    return done
