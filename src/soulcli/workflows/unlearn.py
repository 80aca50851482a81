"""unlearn: run the recipe's objective with its optimizer on the target model.

Readable top to bottom: resolve data and models, encode the splits, plan every batch, let the
objective cache its reference quantities, train (``engine.loop.train`` with the objective as
the step's forward; or take the one-shot influence step), save the run folder atomically,
evaluate against the retain reference.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from soulcli.data.encode import IGNORE_INDEX, EncodedItem, pad_batch, pad_id
from soulcli.data.io import atomic_dir, write_json
from soulcli.engine import checkpoint
from soulcli.engine.checkpoint import Checkpoints
from soulcli.engine.distributed import (DistContext, DistributedCurvature, full_state_dict, global_totals,
                                        init_distributed, wrap_model)
from soulcli.engine.loop import MicroBatches, Training, make_scheduler, train
from soulcli.engine.progress import Reporter
from soulcli.engine.rundir import JsonlWriter, versions
from soulcli.engine.sampling import plan_unlearning, split
from soulcli.errors import UserError
from soulcli.recipe import Recipe, dump_recipe
from soulcli.tasks import TrainSet, encode_train_set
from soulcli.tasks.base import QA
from soulcli.workflows import artifacts, common, provenance


@dataclass
class PreparedRun:
    """A target model ready to unlearn from, and what it was trained on."""

    recipe: Recipe
    model: torch.nn.Module  # with the recipe's adapter applied; unlearned in place
    tokenizer: Any
    data_dir: Path
    target_dir: Path
    device: torch.device
    dist: DistContext = field(default_factory=DistContext)
    # key of the objective's reference cache; "" = a hash of the data, settings, model and seed
    cache_key: str = ""


def _batch(items: list[EncodedItem], idx: list[int], pad: int, device) -> dict[str, torch.Tensor]:
    b = pad_batch([items[i] for i in idx], pad)
    b["index"] = torch.tensor(idx, dtype=torch.long)
    return {k: v.to(device) for k, v in b.items()}


def _answers_instead(forget: TrainSet, what: str, objective: str) -> None:
    """Refusal and alternate answers replace a QA record's answer; raw text has none to replace."""
    if forget.kind != QA:
        raise UserError(f"objective '{objective}' trains on {what} in place of the forget answers, but "
                        f"this task's forget set ({forget.name}) is raw text; choose an objective "
                        "without refusals or alternates (e.g. ga, graddiff, npo, simnpo, rmu)")


def build_step_batches(recipe: Recipe, tokenizer, objective, forget_set: TrainSet, retain_set: TrainSet,
                       device, seed: int, reporter: Reporter, rank: int = 0, world_size: int = 1,
                       alternates: list[str] | None = None, grad_accum: int = 1) -> tuple[list, dict[str, int]]:
    """Encode the sets and turn the batch plan into one UnlearnBatch per step (``alternates``:
    one answer per forget row, for objectives with ``uses_alternate``), with the number of
    sequences of each set that ``data.max_length`` cut (logged when any). With ``grad_accum`` N
    the plan takes N times the batch sizes and a step is :class:`MicroBatches`: its forget and
    retain indices split into N micro-batches (fewer when a step has fewer than N forget items),
    each with its share of the step's :meth:`~soulcli.objectives.base.Objective.counts`. Under
    torchrun (``world_size`` > 1) every step is :class:`MicroBatches`, this rank's slice of the
    global batch, its shares those of the global counts times ``world_size``
    (:mod:`soulcli.engine.distributed`)."""
    from soulcli.objectives.base import UnlearnBatch, with_shares
    from soulcli.objectives.refusals import load_refusals, pick_refusal

    u = recipe.unlearn
    template = common.template_of(recipe)
    enc = lambda ts: encode_train_set(tokenizer, template, ts, recipe.data.max_length)  # noqa: E731
    instead = lambda answers: enc(TrainSet(forget_set.name, QA, [  # noqa: E731
        {"question": r["question"], "answer": a} for r, a in zip(forget_set.rows, answers)]))
    forget = enc(forget_set)
    use_retain = objective.uses_retain and u.retain_weight > 0
    retain = enc(retain_set) if use_retain else []
    refusal = None
    if objective.uses_refusal:
        _answers_instead(forget_set, "refusals", u.objective)
        refusals = load_refusals(u.refusals_file)
        refusal = instead([pick_refusal(refusals, i, seed) for i in range(len(forget_set.rows))])
    alternate = instead(alternates) if objective.uses_alternate and alternates else None
    sets = {"forget": forget, "retain": retain, "refusal": refusal, "alternate": alternate}
    cut = common.count_cut(reporter, "unlearn", {k: v for k, v in sets.items() if v}, recipe.data.max_length)
    plan = plan_unlearning(len(forget), len(retain), u.batch_size * grad_accum,
                           (u.retain_batch_size or u.batch_size) * grad_accum,
                           u.epochs, seed, use_retain, rank, world_size, u.max_steps)
    pad = pad_id(tokenizer)

    def step_batch(idx: list[int], retain_idx: list[int] | None) -> UnlearnBatch:
        return UnlearnBatch(
            forget=_batch(forget, idx, pad, device),
            retain=_batch(retain, retain_idx, pad, device) if retain_idx is not None else None,
            forget_refusal=_batch(refusal, idx, pad, device) if refusal is not None else None,
            forget_alternate=_batch(alternate, idx, pad, device) if alternate is not None else None,
        )

    if grad_accum == 1 and world_size == 1:
        return [step_batch(st.forget, st.retain) for st in plan], cut
    steps = []
    for st in plan:
        pieces = split(st.forget, grad_accum)
        retains = split(st.retain, len(pieces)) if st.retain is not None else [None] * len(pieces)
        steps.append([step_batch(idx, r) for idx, r in zip(pieces, retains)])
    counts = torch.tensor([[sum(c) for c in zip(*map(objective.counts, micro))] for micro in steps])
    return [MicroBatches(with_shares(objective, micro, tuple(totals), world_size))
            for micro, totals in zip(steps, global_totals(counts, world_size).tolist())], cut


def prepare_model(recipe: Recipe, reporter: Reporter, device,
                  dist: DistContext | None = None) -> PreparedRun:
    """The target model (built and cached first when the recipe names a built-in one) with its
    adapter, ready for :func:`unlearn_model`."""
    from soulcli.models.loading import apply_adapter, load_model

    data_dir, target_dir = artifacts.target_model_path(recipe, reporter)
    model, tokenizer = load_model(str(target_dir), recipe.model.dtype, device, recipe.model.trust_remote_code)
    model = apply_adapter(model, recipe.model.adapter, recipe.model.lora, recipe.model.trainable)
    return PreparedRun(recipe, model, tokenizer, data_dir, target_dir, device, dist or DistContext())


def build_optimizer_for(recipe: Recipe, model):
    """The recipe's optimizer on ``model`` (an optimizer taking a ``seed``, as zo does, gets the
    run's unless ``optimizer.args`` sets one) and its curvature estimator, or None."""
    from soulcli.optim import build_curvature, build_optimizer, decay_groups, optimizer_hparams

    o = recipe.optimizer
    groups = decay_groups(model, decay_all=o.decay_all)
    args = {"seed": recipe.seed, **o.args} if "seed" in optimizer_hparams(o.name) else o.args
    opt = build_optimizer(o.name, groups, lr=o.lr, weight_decay=o.weight_decay, **args)
    kind = o.curvature or getattr(opt, "default_curvature", None)
    curvature = build_curvature(kind) if kind else None
    if kind == "hutchinson" and hasattr(model, "set_attn_implementation"):
        # Hessian-vector products need double backward, which fused SDPA kernels lack on CPU
        model.set_attn_implementation("eager")
    return opt, curvature


def unlearn_model(run: PreparedRun, reporter: Reporter, on_row=None, on_step_end=None,
                  checkpoints: Checkpoints | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Unlearn ``run.model`` in place; returns the training record (steps, seconds, last row, rows,
    ``truncated``: how many sequences of each set ``data.max_length`` cut).
    ``checkpoints``: where to write checkpoints, and the one to resume (engine.checkpoint).
    ``stop_after``: take only the plan's first N steps, the learning-rate schedule still spanning
    the whole plan, which leaves the model as a full run had it at step N (compare-optimizers
    re-creates a selected step so; the one-shot influence step ignores it).

    Under torchrun (``run.dist.enabled``) the loss runs through DDP, each rank on its own
    shard of the batch plan, and curvature estimates are reduced across ranks.
    """
    from soulcli.models.loading import DTYPES
    from soulcli.models.precision import store
    from soulcli.objectives import build_objective

    recipe, u = run.recipe, run.recipe.unlearn
    task = common.task_of(recipe)
    forget_set, retain_set = task.unlearn_sets(run.data_dir)
    objective = build_objective(u.objective, forget_weight=u.forget_weight, retain_weight=u.retain_weight,
                                retain_loss=u.retain_loss, **u.objective_args)
    alternates = None
    if objective.uses_alternate:
        _answers_instead(forget_set, "alternate answers", u.objective)
        alternates = task.alternates(run.data_dir, forget_set, recipe.seed)
    iterative = u.method != "influence"
    batches, cut = build_step_batches(recipe, run.tokenizer, objective, forget_set, retain_set, run.device,
                                      recipe.seed, reporter, run.dist.rank, run.dist.world_size, alternates,
                                      u.grad_accum if iterative else 1)
    if not batches:
        raise UserError(f"split '{forget_set.name}' gives no unlearning steps; check unlearn.epochs/max_steps")
    if not iterative:
        return {**influence_step(run, reporter, batches, forget_set, retain_set, on_row), "truncated": cut}

    autocast = common.prepare_training(recipe, run.model, reporter)
    if objective.needs_setup:
        reporter.info(f"Caching the starting model's reference quantities for '{u.objective}'")
        cache_dir = Path(recipe.cache_dir) / "reference_cache"
        cache_dir.mkdir(parents=True, exist_ok=True)
        flat = [m for step in batches for m in (step if isinstance(step, MicroBatches) else [step])]
        with torch.no_grad(), (torch.autocast(run.device.type, autocast) if autocast else nullcontext()):
            run.model.eval()
            objective.setup(run.model, flat, cache_dir, run.cache_key or
                            common.objective_cache_key(recipe, run.data_dir, recipe.seed))
    strategy = recipe.train.strategy
    model = wrap_model(run.model, run.dist, run.device, strategy)  # FSDP: before the optimizer sees the shards
    opt, curvature = build_optimizer_for(recipe, run.model)
    if opt.zeroth_order and run.dist.enabled:
        raise UserError(f"optimizer '{recipe.optimizer.name}' does not run under torchrun (its two "
                        "losses are not reduced across ranks); run it in one process")
    if curvature is not None and run.dist.enabled:
        curvature = DistributedCurvature(curvature, run.dist, strategy)
    o = recipe.optimizer
    every = f", curvature {type(curvature).__name__} every {o.hessian_interval} steps" if curvature else ""
    reporter.info(f"Unlearning with {u.objective} + {o.name} (lr {o.lr:g}{every}): {len(batches)} steps, "
                  f"{len(forget_set.rows)} forget items x {u.epochs} epochs")
    training = Training(
        model=model, optimizer=opt, forward=objective,
        scheduler=make_scheduler(opt, u.lr_scheduler, len(batches), u.warmup_steps),
        curvature=curvature, hessian_interval=o.hessian_interval, max_grad_norm=u.max_grad_norm,
        log_every=u.log_every, on_nonfinite=u.on_nonfinite, checkpoints=checkpoints, autocast=autocast,
        distributed=run.dist.enabled)
    steps = min(stop_after or len(batches), len(batches))
    result = train(training, batches[:steps], steps, reporter, "unlearn", on_row, on_step_end)
    if run.dist.enabled and strategy == "fsdp":
        run.model = gathered(run, reporter, full_state_dict(run.model))
    store(run.model, DTYPES[recipe.model.dtype])
    run.model.eval()
    return {"steps": result.steps, "seconds": result.seconds, "last": result.last, "rows": result.rows,
            "tokens_per_second": result.tokens / max(result.seconds, 1e-9), "skipped_steps": result.skipped,
            "truncated": cut}


def gathered(run: PreparedRun, reporter: Reporter, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """After FSDP training: on rank 0 a plain copy of the target (loaded anew, its adapter
    applied) holding the gathered ``state`` (:func:`~soulcli.engine.distributed.full_state_dict`),
    to save and evaluate; the sharded model elsewhere, whose ranks write nothing."""
    if not run.dist.is_main:
        return run.model
    model = prepare_model(run.recipe, reporter, run.device).model
    model.load_state_dict(state)
    return model


def _label_tokens(items) -> int:
    return sum(sum(1 for t in it.labels if t != IGNORE_INDEX) for it in items)


def influence_step(run: PreparedRun, reporter: Reporter, batches: list, forget_set: TrainSet,
                   retain_set: TrainSet, on_row=None) -> dict[str, Any]:
    """The one-shot influence update (``unlearn.method: influence``) on the forget batches of
    one epoch, with curvature from the retain batches. ``unlearn.influence.scale`` defaults to
    the ratio of the forget set's learned tokens to the retain set's: the influence step on the
    summed losses the target was trained on (soulcli.optim.influence)."""
    from soulcli.optim.influence import influence_unlearn

    recipe, u, inf = run.recipe, run.recipe.unlearn, run.recipe.unlearn.influence
    template = common.template_of(recipe)
    enc = encode_train_set(run.tokenizer, template, retain_set, recipe.data.max_length)
    scale = inf.scale
    if scale is None:  # the sum-weighted Newton step: forget over retain answer tokens
        scale = _label_tokens(encode_train_set(run.tokenizer, template, forget_set, recipe.data.max_length))
        scale /= max(1, _label_tokens(enc))
    retain_batches = [b.retain for b in batches if b.retain is not None][: inf.retain_batches]
    if not retain_batches:  # objectives without a retain term still need retain curvature
        bs = u.retain_batch_size or u.batch_size
        retain_batches = [_batch(enc, list(range(i, min(i + bs, len(enc)))), pad_id(run.tokenizer),
                                 run.device) for i in range(0, min(len(enc), bs * inf.retain_batches), bs)]
    n_forget = len(forget_set.rows)
    forget_batches = [b.forget for b in batches[: max(1, -(-n_forget // u.batch_size))]]
    reporter.info(f"Influence unlearning ({inf.method}, damping {inf.damping}, scale {scale:.4g}"
                  f"{'' if inf.scale is not None else ' = forget / retain tokens'}) on {n_forget} forget items")
    t0 = time.perf_counter()
    diag = influence_unlearn(run.model, forget_batches, retain_batches, method=inf.method,
                             damping=inf.damping, scale=scale)
    row = {"step": 1, **{k: float(v) for k, v in diag.items()}, "scale": scale, "seconds": time.perf_counter() - t0}
    if on_row:
        on_row(row)
    return {"steps": 1, "seconds": row["seconds"], "last": row, "rows": [row], "skipped_steps": 0}


def run_win_rate_warning(rows: list[dict], rho: float | None) -> str | None:
    """Sophia's warning (soulcli.optim.win_rate_warning) over the win rates a run logged."""
    from soulcli.optim import win_rate_warning

    rates = [r["win_rate"] for r in rows if "win_rate" in r]
    return win_rate_warning(rates, window=min(5, len(rates)), rho=rho) if rates else None


def run_unlearn(recipe: Recipe, reporter: Reporter, output: Path | None = None,
                overwrite: bool = False, resume: bool = False) -> dict[str, Any] | None:
    """The whole `soul unlearn` command; returns the summary written to summary.json.

    The output folder is checked and locked before any work (a non-empty one is refused unless
    ``overwrite`` and soulcli wrote it); it appears only when the run finished with finite values.
    With ``unlearn.save_every`` checkpoints are written beside it (and removed once it is in
    place); ``resume`` continues the latest one. With ``unlearn.eval_every`` or ``keep: best``
    the headline metrics are evaluated during the run (:mod:`soulcli.workflows.tracking`) and
    the state ``keep`` names is the one saved and evaluated.
    """
    from soulcli.models.loading import export_model
    from soulcli.workflows import tracking
    from soulcli.workflows.evaluate import evaluate_and_report, reference_stats

    device = common.setup_runtime(recipe)
    dist_ctx, device = init_distributed(device)
    if dist_ctx.enabled and recipe.train.strategy == "fsdp" and (
            recipe.unlearn.keep == "best" or recipe.unlearn.eval_every):
        raise UserError("unlearn.keep: best and unlearn.eval_every do not run with train.strategy: fsdp "
                        "(rank 0 evaluates alone, the model is sharded); set unlearn.keep: last and "
                        "unlearn.eval_every: null, or use train.strategy: ddp")
    out_dir = Path(output or recipe.output_dir or Path("runs") / recipe.name)
    checkpoints = checkpoint.prepare(out_dir, recipe.unlearn.save_every, common.checkpoint_key(recipe, "unlearn"),
                                     resume, dist_ctx.enabled)
    if not dist_ctx.is_main:  # other ranks train their shard; rank 0 builds, writes, evaluates
        reporter = Reporter(reporter.console, quiet=True)
        dist_ctx.barrier()  # rank 0 builds any missing benchmark / models first
        unlearn_model(prepare_model(recipe, reporter, device, dist_ctx), reporter)
        dist_ctx.barrier()
        return None  # nothing to print: rank 0 reports
    with atomic_dir(out_dir, overwrite=overwrite, log=reporter.info) as tmp:
        run = prepare_model(recipe, reporter, device, dist_ctx)
        model, tokenizer, data_dir = run.model, run.tokenizer, run.data_dir
        reference = artifacts.reference_model_path(recipe, reporter, data_dir)
        stats = reference_stats(recipe, reference, data_dir, reporter, device) if reference else None
        dist_ctx.barrier()
        (tmp / "resolved_recipe.yaml").write_text(dump_recipe(recipe))
        write_json(tmp / "versions.json", versions())
        write_json(tmp / provenance.FILE, provenance.record(recipe, data_dir, run.target_dir, reference))
        tracker = tracking.unlearn_tracker(recipe, model, tokenizer, data_dir, stats)
        writer = JsonlWriter(tmp / "metrics.jsonl")
        try:
            record = unlearn_model(run, reporter, on_row=writer, on_step_end=tracker, checkpoints=checkpoints)
        finally:
            writer.close()
        model = run.model  # under FSDP the gathered plain copy
        tracker.finish(record["steps"])
        kept, kept_warning = tracker.kept(record["steps"])
        if tracker.keep_best:
            tracker.restore_best()
            reporter.info(f"Keeping step {kept['step']} of {record['steps']} ({kept['rule']})")
        warnings = [w for w in [run_win_rate_warning(record["rows"], recipe.optimizer.args.get("rho")),
                                kept_warning] if w]
        if record["skipped_steps"]:
            warnings.append(f"{record['skipped_steps']} of {record['steps']} steps were skipped "
                            "(non-finite loss or gradient; unlearn.on_nonfinite: skip)")
        for warning in warnings:
            reporter.info(f"[yellow]warning:[/] {warning}")
        export_model(model, tokenizer, tmp / "model", recipe.model.save)
        evaluation = evaluate_and_report(recipe, model, tokenizer, data_dir, reporter, tmp / "eval.json",
                                         reference_model=reference, reference=stats,
                                         model_label=str(out_dir / "model"),
                                         title=f"{recipe.name}: after unlearning")
        summary = {
            "name": recipe.name, "run_dir": str(out_dir), "model": str(out_dir / "model"),
            "target_model": str(run.target_dir), "task": recipe.task, "data": str(data_dir),
            "objective": recipe.unlearn.objective, "optimizer": recipe.optimizer.name,
            "method": recipe.unlearn.method, "world_size": dist_ctx.world_size,
            "steps": record["steps"], "skipped_steps": record["skipped_steps"],
            "truncated": {**record["truncated"], "max_length": recipe.data.max_length},
            "seconds": round(record["seconds"], 2),
            "final": {k: v for k, v in record["last"].items()}, "kept": kept,
            "metrics": evaluation["aggregates"], "eval_limited": evaluation["result"]["limited"],
            "warnings": warnings,
        }
        write_json(tmp / "summary.json", summary)
    if checkpoints is not None:
        checkpoint.clear(checkpoints)
    dist_ctx.barrier()
    reporter.info(f"Run saved to {out_dir}")
    return summary
