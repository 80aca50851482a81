"""unlearn: run the recipe's objective with its optimizer on the target model.

Readable top to bottom: resolve data and models, encode the splits, plan every batch, let the
objective cache its reference quantities, train (or take the one-shot influence step), save
the run folder atomically, evaluate against the retain reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from soulcli.data.encode import EncodedItem, encode_qa_batch, pad_batch
from soulcli.engine.loop import make_scheduler, train_loop
from soulcli.engine.progress import Reporter
from soulcli.data.io import atomic_dir
from soulcli.engine.rundir import JsonlWriter, versions, write_json
from soulcli.engine.sampling import plan_unlearning
from soulcli.errors import UserError
from soulcli.recipe import Recipe, dump_recipe
from soulcli.workflows import common


def _batch(items: list[EncodedItem], idx: list[int], pad_id: int, device) -> dict[str, torch.Tensor]:
    b = pad_batch([items[i] for i in idx], pad_id)
    b["index"] = torch.tensor(idx, dtype=torch.long)
    return {k: v.to(device) for k, v in b.items()}


def concat_batches(batches: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack several right-padded batches into one (for the curvature estimate)."""
    width = max(b["input_ids"].shape[1] for b in batches)
    out: dict[str, list[torch.Tensor]] = {"input_ids": [], "attention_mask": [], "labels": []}
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": -100}
    for b in batches:
        for k in out:
            t = b[k]
            out[k].append(torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill[k]))
    return {k: torch.cat(v) for k, v in out.items()}


def forget_alternates(forget_rows: list[dict], perturbed_rows: list[dict], seed: int) -> list[str]:
    """One plausible wrong answer per forget item (AltPO's alternates): a ``perturbed_answer`` of
    the row of the forget split's ``_perturbed`` file asking the same question, picked per item."""
    from soulcli.objectives.refusals import pick_refusal

    by_question = {row["question"]: row["perturbed_answer"] for row in perturbed_rows}
    out = []
    for i, row in enumerate(forget_rows):
        answers = by_question.get(row["question"])
        if not answers:
            raise UserError(f"forget item {i} has no perturbed answers in the _perturbed split "
                            "(AltPO's alternates); give a benchmark whose _perturbed split covers "
                            "every forget question")
        out.append(pick_refusal(answers, i, seed))
    return out


def build_step_batches(recipe: Recipe, tokenizer, objective, forget_rows: list[dict],
                       retain_rows: list[dict], device, seed: int, rank: int = 0,
                       world_size: int = 1, alternates: list[str] | None = None):
    """Encode the splits and turn the batch plan into UnlearnBatch objects (``alternates``: one
    answer per forget row, for objectives with ``uses_alternate``)."""
    from soulcli.objectives.base import UnlearnBatch
    from soulcli.objectives.refusals import load_refusals, pick_refusal

    u = recipe.unlearn
    template = common.template_of(recipe)
    enc = lambda rows, answers: encode_qa_batch(  # noqa: E731
        tokenizer, template, [r["question"] for r in rows], answers, recipe.data.max_length)
    forget = enc(forget_rows, [r["answer"] for r in forget_rows])
    use_retain = objective.uses_retain and u.retain_weight > 0
    retain = enc(retain_rows, [r["answer"] for r in retain_rows]) if use_retain else []
    refusal = None
    if objective.uses_refusal:
        refusals = load_refusals(u.refusals_file)
        refusal = enc(forget_rows, [pick_refusal(refusals, i, seed) for i in range(len(forget_rows))])
    alternate = enc(forget_rows, alternates) if objective.uses_alternate and alternates else None
    plan = plan_unlearning(len(forget), len(retain), u.batch_size, u.retain_batch_size or u.batch_size,
                           u.epochs, seed, use_retain, rank, world_size, u.max_steps)
    pad = tokenizer.pad_token_id
    batches = [
        UnlearnBatch(
            forget=_batch(forget, st.forget, pad, device),
            retain=_batch(retain, st.retain, pad, device) if st.retain is not None else None,
            forget_refusal=_batch(refusal, st.forget, pad, device) if refusal is not None else None,
            forget_alternate=_batch(alternate, st.forget, pad, device) if alternate is not None else None,
        )
        for st in plan
    ]
    return batches, plan


def prepare_model(recipe: Recipe, reporter: Reporter, device):
    """(data dir, target dir, model with its adapter, tokenizer)."""
    from soulcli.models.loading import apply_adapter, load_model

    data_dir, target_dir = common.target_model_path(recipe, reporter)
    model, tokenizer = load_model(str(target_dir), recipe.model.dtype, device)
    model = apply_adapter(model, recipe.model.adapter, recipe.model.lora)
    return data_dir, target_dir, model, tokenizer


def build_optimizer_for(recipe: Recipe, model):
    from soulcli.optim import build_curvature, build_optimizer

    o = recipe.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(o.name, params, lr=o.lr, weight_decay=o.weight_decay, **o.args)
    kind = o.curvature or getattr(opt, "default_curvature", None)
    curvature = build_curvature(kind) if kind else None
    if kind == "hutchinson" and hasattr(model, "set_attn_implementation"):
        # Hessian-vector products need double backward, which fused SDPA kernels lack on CPU
        model.set_attn_implementation("eager")
    return opt, curvature


def unlearn_model(recipe: Recipe, model, tokenizer, data_dir: Path, reporter: Reporter, device,
                  seed: int, on_row=None, on_step_end=None, cache_key: str = "",
                  dist_ctx=None) -> dict[str, Any]:
    """Unlearn in place; returns the training record (steps, seconds, last row, rows).

    Under torchrun (``dist_ctx.enabled``) the loss runs through DDP, each rank on its own
    shard of the batch plan, and curvature estimates are reduced across ranks.
    """
    from soulcli.engine.distributed import DistContext, DistributedCurvature, wrap_model

    dist_ctx = dist_ctx or DistContext()
    from soulcli.data.tofu import forget_split_names
    from soulcli.objectives import build_objective

    u = recipe.unlearn
    forget_name, perturbed_name, retain_name = forget_split_names(common.forget_pct(recipe))
    forget_rows = common.load_split(data_dir, forget_name)
    retain_rows = common.load_split(data_dir, retain_name)
    objective = build_objective(u.objective, forget_weight=u.forget_weight, retain_weight=u.retain_weight,
                                retain_loss=u.retain_loss, **u.objective_args)
    alternates = (forget_alternates(forget_rows, common.load_split(data_dir, perturbed_name), seed)
                  if objective.uses_alternate else None)
    batches, plan = build_step_batches(recipe, tokenizer, objective, forget_rows, retain_rows, device, seed,
                                       dist_ctx.rank, dist_ctx.world_size, alternates)
    if not batches:
        raise UserError(f"split '{forget_name}' gives no unlearning steps; check unlearn.epochs/max_steps")

    if u.method == "influence":
        from soulcli.optim.influence import influence_unlearn

        retain_batches = [b.retain for b in batches if b.retain is not None][: u.influence.retain_batches]
        if not retain_batches:  # objectives without a retain term still need retain curvature
            enc = encode_qa_batch(tokenizer, common.template_of(recipe), [r["question"] for r in retain_rows],
                                  [r["answer"] for r in retain_rows], recipe.data.max_length)
            bs = u.retain_batch_size or u.batch_size
            retain_batches = [_batch(enc, list(range(i, min(i + bs, len(enc)))), tokenizer.pad_token_id, device)
                              for i in range(0, min(len(enc), bs * u.influence.retain_batches), bs)]
        forget_batches = [b.forget for b in batches[: max(1, -(-len(forget_rows) // u.batch_size))]]
        reporter.info(f"Influence unlearning ({u.influence.method}, damping {u.influence.damping}) on "
                      f"{len(forget_rows)} forget items")
        import time

        t0 = time.perf_counter()
        diag = influence_unlearn(model, forget_batches, retain_batches, method=u.influence.method,
                                 damping=u.influence.damping, scale=u.influence.scale)
        row = {"step": 1, **{k: float(v) for k, v in diag.items()}, "seconds": time.perf_counter() - t0}
        if on_row:
            on_row(row)
        return {"steps": 1, "seconds": row["seconds"], "last": row, "rows": [row]}

    if objective.needs_setup:
        reporter.info(f"Caching the starting model's reference quantities for '{u.objective}'")
        cache_dir = Path(recipe.cache_dir) / "reference_cache"
        cache_dir.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            model.eval()
            objective.setup(model, batches, cache_dir, cache_key or common.short_hash(
                [str(data_dir), recipe.unlearn.__repr__(), recipe.model.source, seed]))
    opt, curvature = build_optimizer_for(recipe, model)
    train_model = wrap_model(model, dist_ctx, device)
    if curvature is not None and dist_ctx.enabled:
        curvature = DistributedCurvature(curvature, dist_ctx)
    sched = make_scheduler(opt, u.lr_scheduler, len(batches), u.warmup_steps)
    pad = tokenizer.pad_token_id
    reporter.info(
        f"Unlearning with {u.objective} + {recipe.optimizer.name} (lr {recipe.optimizer.lr:g}"
        f"{', curvature ' + curvature.__class__.__name__ + ' every ' + str(recipe.optimizer.hessian_interval) + ' steps' if curvature else ''}): "
        f"{len(batches)} steps, {len(forget_rows)} forget items x {u.epochs} epochs")

    def compute_loss(step: int):
        b = batches[step]
        loss, terms = objective(train_model, b)
        n = int(b.forget["attention_mask"].sum()) + (int(b.retain["attention_mask"].sum()) if b.retain is not None else 0)
        return loss, terms, n

    def curvature_batch(step: int):
        b = batches[step]
        return concat_batches([x for x in (b.forget, b.retain) if x is not None], pad)

    def curvature_parts(step: int):
        b = batches[step]
        return [x for x in (b.forget, b.retain) if x is not None]

    result = train_loop(train_model, opt, len(batches), compute_loss, reporter=reporter, description="unlearn",
                        scheduler=sched, curvature=curvature, curvature_batch=curvature_batch,
                        curvature_parts=curvature_parts,
                        hessian_interval=recipe.optimizer.hessian_interval,
                        max_grad_norm=u.max_grad_norm, log_every=u.log_every, on_row=on_row,
                        on_step_end=on_step_end)
    model.eval()
    return {"steps": result.steps, "seconds": result.seconds, "last": result.last, "rows": result.rows,
            "tokens_per_second": result.tokens / max(result.seconds, 1e-9)}


def run_win_rate_warning(rows: list[dict], rho: float | None) -> str | None:
    """Sophia's warning (soulcli.optim.win_rate_warning) over the win rates a run logged."""
    from soulcli.optim import win_rate_warning

    rates = [r["win_rate"] for r in rows if "win_rate" in r]
    return win_rate_warning(rates, window=min(5, len(rates)), rho=rho) if rates else None


def run_unlearn(recipe: Recipe, reporter: Reporter, output: Path | None = None) -> dict[str, Any] | None:
    """The whole `soul unlearn` command; returns the summary written to summary.json."""
    from soulcli.models.loading import export_model
    from soulcli.workflows.evaluate import evaluate_and_report

    from soulcli.engine.distributed import init_distributed

    device = common.setup_runtime(recipe)
    dist_ctx, device = init_distributed(device)
    out_dir = Path(output or recipe.output_dir or Path("runs") / recipe.name)
    if not dist_ctx.is_main:  # other ranks train their shard; rank 0 builds, writes, evaluates
        reporter = Reporter(reporter.console, quiet=True)
        dist_ctx.barrier()  # rank 0 builds any missing benchmark / models first
        data_dir, _, model, tokenizer = prepare_model(recipe, reporter, device)
        unlearn_model(recipe, model, tokenizer, data_dir, reporter, device, recipe.seed, dist_ctx=dist_ctx)
        dist_ctx.barrier()
        return None  # nothing to print: rank 0 reports
    data_dir, target_dir, model, tokenizer = prepare_model(recipe, reporter, device)
    reference = common.reference_model_path(recipe, reporter, data_dir)
    dist_ctx.barrier()
    with atomic_dir(out_dir, overwrite=True) as tmp:
        (tmp / "resolved_recipe.yaml").write_text(dump_recipe(recipe))
        write_json(tmp / "versions.json", versions())
        writer = JsonlWriter(tmp / "metrics.jsonl")
        try:
            record = unlearn_model(recipe, model, tokenizer, data_dir, reporter, device, recipe.seed,
                                   on_row=writer, dist_ctx=dist_ctx)
        finally:
            writer.close()
        warning = run_win_rate_warning(record["rows"], recipe.optimizer.args.get("rho"))
        if warning:
            reporter.info(f"[yellow]warning:[/] {warning}")
        export_model(model, tokenizer, tmp / "model")
        evaluation = evaluate_and_report(recipe, model, tokenizer, data_dir, reporter, tmp / "eval.json",
                                         reference_model=reference, model_label=str(out_dir / "model"),
                                         title=f"{recipe.name}: after unlearning")
        summary = {
            "name": recipe.name, "run_dir": str(out_dir), "model": str(out_dir / "model"),
            "target_model": str(target_dir), "data": str(data_dir),
            "objective": recipe.unlearn.objective, "optimizer": recipe.optimizer.name,
            "method": recipe.unlearn.method, "world_size": dist_ctx.world_size,
            "steps": record["steps"], "seconds": round(record["seconds"], 2),
            "final": {k: v for k, v in record["last"].items()},
            "metrics": evaluation["aggregates"], "warnings": [warning] if warning else [],
        }
        write_json(tmp / "summary.json", summary)
    dist_ctx.barrier()
    reporter.info(f"Run saved to {out_dir}")
    return summary
