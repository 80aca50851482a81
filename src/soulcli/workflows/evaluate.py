"""evaluate: the task's metrics for a run folder or any model, against the retain reference.

Also the closing step of `soul finetune` (:func:`run_finetune_command`): it needs both the
training (finetune, through artifacts) and the evaluation, so it sits here, above both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from soulcli.data.io import write_json
from soulcli.engine.progress import Reporter
from soulcli.engine.rundir import versions
from soulcli.errors import UserError
from soulcli.recipe import Recipe, load_recipe, recipe_to_dict, replace
from soulcli.workflows import artifacts, common, provenance
from soulcli.workflows.finetune import run_finetune


def eval_config(recipe: Recipe, metrics: tuple[str, ...] | None = None):
    """The recipe's ``eval`` section, ``max_length`` defaulting to ``data.max_length``."""
    import dataclasses

    e = recipe.eval
    return dataclasses.replace(e, metrics=metrics or e.metrics,
                               max_length=e.max_length or recipe.data.max_length)


def _progress(reporter: Reporter):
    state: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if state.get("stage") != stage and done == 0:
            state["stage"] = stage
            reporter.info(f"  evaluating {stage} ({total} items)")

    return update


def reference_stats(recipe: Recipe, reference_model: Path, data_dir: Path, reporter: Reporter,
                    device: torch.device) -> dict:
    """The retain model's per-item values, computed once and cached beside that model under a
    content key (:func:`common.reference_stats_key`), so a moved cache keeps them."""
    from soulcli.eval import (evaluate_model, load_reference, reference_from_result, reference_metrics,
                              save_reference)
    from soulcli.models.loading import load_model

    cache = reference_model / f"reference-{common.reference_stats_key(recipe, data_dir)}.json"
    if cache.is_file():
        return load_reference(cache)
    reporter.info(f"Evaluating the retain reference model {reference_model} (cached for later runs)")
    model, tokenizer = load_model(str(reference_model), recipe.model.dtype, device,
                                  recipe.model.trust_remote_code)
    model.eval()
    task = common.task_of(recipe, tokenizer)
    suite = task.suite(eval_config(recipe))
    names = reference_metrics(suite)
    result = evaluate_model(model, tokenizer, suite, task.eval_splits(data_dir), eval_config(recipe, names),
                            progress=_progress(reporter))
    ref = reference_from_result(result, names)
    save_reference(cache, ref)
    return ref


def aggregates(result: dict) -> dict[str, float | None]:
    return {name: m.get("value") for name, m in result["metrics"].items()}


def evaluate_and_report(recipe: Recipe, model, tokenizer, data_dir: Path, reporter: Reporter,
                        out_path: Path | None, *, reference_model: Path | None = None,
                        reference: dict | None = None, model_label: str = "",
                        metrics: tuple[str, ...] | None = None, title: str = "evaluation") -> dict[str, Any]:
    """Evaluate ``model``, write ``out_path`` (eval.json, atomically) and print the summary table."""
    from soulcli.eval import evaluate_model
    from soulcli.eval.report import render_summary

    from soulcli.eval import reference_metrics

    device = next(model.parameters()).device
    task = common.task_of(recipe, tokenizer)
    suite = task.suite(eval_config(recipe))
    if reference is None and reference_model is not None and reference_metrics(suite):
        reference = reference_stats(recipe, reference_model, data_dir, reporter, device)
    model.eval()
    result = evaluate_model(model, tokenizer, suite, task.eval_splits(data_dir), eval_config(recipe, metrics),
                            reference=reference, progress=_progress(reporter))
    result.update({
        "task": recipe.task, "model": model_label, "data": str(data_dir),
        "data_fingerprint": common.data_fingerprint(data_dir, recipe),
        "reference": str(reference_model) if reference_model else ("given" if reference else None),
        "recipe": recipe_to_dict(recipe), "versions": versions(),
    })
    if out_path is not None:
        write_json(out_path, result)
    if not reporter.quiet:
        reporter.console.print(f"[bold]{title}[/]")
        render_summary(result, reporter.console, suite)
    return {"aggregates": aggregates(result), "result": result}


def _load_reference(arg: str | None, recipe: Recipe, reporter: Reporter, data_dir: Path,
                    device) -> tuple[Path | None, dict | None]:
    if arg is None:
        return artifacts.reference_model_path(recipe, reporter, data_dir), None
    path = Path(arg)
    if path.is_file() and path.suffix == ".json":
        from soulcli.eval import as_reference

        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"--reference {path}: not valid JSON (line {exc.lineno}); pass an eval.json") from None
        return None, as_reference(data)
    from soulcli.models.loading import resolve_model_path

    return Path(resolve_model_path(arg)), None


def earlier_eval(path: Path, fingerprint: str) -> dict | None:
    """The eval.json at ``path`` that newly computed metrics merge into (None if absent), so
    `soul evaluate RUN --metrics a` keeps the others; a file that is not an evaluation on this
    data is refused (merging would mix two evaluations)."""
    if path.is_dir():
        raise UserError(f"--output {path} is a folder; give the eval.json file to write")
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or not isinstance(old.get("metrics"), dict):
        raise UserError(f"{path} exists and is not an eval.json; choose another --output")
    if old.get("data_fingerprint") not in (None, fingerprint):
        raise UserError(f"{path} holds an evaluation on other data ({old.get('data')}); choose another --output")
    return old


def run_folder(run_dir: Path, recipe: Recipe | None,
               overrides: list[str] | None) -> tuple[Recipe | None, str]:
    """(the recipe, the model path) of a run folder written by `soul unlearn`: the given recipe,
    else the folder's resolved_recipe.yaml with ``overrides``; a folder without a model is refused."""
    if not run_dir.is_dir():
        raise UserError(f"run folder '{run_dir}' does not exist; pass a folder written by `soul unlearn`")
    if not (run_dir / "model" / "config.json").is_file():
        raise UserError(f"'{run_dir}' has no model/ folder; pass a run folder from `soul unlearn` or use --model")
    if recipe is None and (run_dir / "resolved_recipe.yaml").is_file():
        recipe = load_recipe(run_dir / "resolved_recipe.yaml", overrides)
    return recipe, str(run_dir / "model")


def run_evaluate(recipe: Recipe | None, reporter: Reporter, run_dir: Path | None, model_path: str | None,
                 data: str | None, reference: str | None, metrics: tuple[str, ...] | None,
                 output: Path | None, overrides: list[str] | None = None,
                 gates: Sequence[str] = (), target: str | None = None) -> dict[str, Any]:
    """`soul evaluate RUN_DIR` or `soul evaluate --model PATH [--data DIR]`; the metric selection
    and the ``gates``' metric names are checked against the task's suite before any work.

    A run is evaluated on the data and reference recorded in its ``provenance.json``, checked
    (:func:`provenance.verified`), not on what its recipe resolves to now; ``data`` /
    ``reference`` replace them, ``target`` says where the run's target lies now."""
    from soulcli.eval import resolve_metrics
    from soulcli.eval.report import parse_gate
    from soulcli.models.loading import load_model

    if run_dir is not None:
        recipe, model_path = run_folder(run_dir, recipe, overrides)
        output = output or run_dir / "eval.json"
    if model_path is None:
        raise UserError("nothing to evaluate: pass a RUN_DIR or --model PATH")
    if target is not None and run_dir is None:
        raise UserError("--target says where a run's target lies now; pass it with a RUN_DIR")
    if recipe is None:
        recipe = load_recipe(None, overrides)
    if data is not None:
        recipe = replace(recipe, data={"source": data})
    suite = common.task_of(recipe).suite(eval_config(recipe))
    resolve_metrics(suite, metrics)
    for name in gates:
        parse_gate(f"{name}=0", suite)
    device = common.setup_runtime(recipe)
    given = {role for role, value in (("data", data), ("reference", reference)) if value is not None}
    moved = {"target": Path(target)} if target is not None else None
    inputs = provenance.verified(run_dir, recipe, given, moved) if run_dir is not None else None
    data_dir = inputs["data"] if inputs and "data" not in given else common.benchmark_dir(recipe, reporter)
    if inputs and "reference" not in given:
        ref_model, ref_data = inputs["reference"], None
    else:
        ref_model, ref_data = _load_reference(reference, recipe, reporter, data_dir, device)
    model, tokenizer = load_model(model_path, recipe.model.dtype, device, recipe.model.trust_remote_code)
    output = Path(output or Path(model_path) / "eval.json")
    old = earlier_eval(output, common.data_fingerprint(data_dir, recipe))  # before the work
    out = evaluate_and_report(recipe, model, tokenizer, data_dir, reporter, None,
                              reference_model=ref_model, reference=ref_data, model_label=model_path,
                              metrics=metrics, title=f"evaluation of {model_path}")
    result = out["result"]
    if old is not None:  # limited if either part was: some of its metrics are a quick check's
        result = {**old, **result, "metrics": {**old["metrics"], **result["metrics"]},
                  "limited": bool(old.get("limited")) or result["limited"]}
    write_json(output, result)
    return {**out, "result": result, "path": str(output), "suite": suite}


def run_finetune_command(recipe: Recipe, reporter: Reporter, which: Sequence[str],
                         output: Path | None = None, force: bool = False, overwrite: bool = False,
                         resume: bool = False) -> dict | None:
    """`soul finetune`: train (or reuse), then evaluate the target against the retain model.
    Under torchrun every rank trains; rank 0 alone writes, evaluates and reports (None elsewhere)."""
    from soulcli.models.loading import load_model

    results = run_finetune(recipe, reporter, which, output, force=force or output is not None,
                           overwrite=overwrite, resume=resume, distributed=True)
    if results is None:
        return None
    if "target" not in results:
        return {"models": results}
    device = common.setup_runtime(recipe)
    target = Path(results["target"]["path"])
    data_dir = common.benchmark_dir(recipe, reporter)
    reference = Path(results["retain"]["path"]) if "retain" in results else (
        artifacts.reference_model_path(recipe, reporter, data_dir) if output is None else None)
    model, tokenizer = load_model(str(target), recipe.model.dtype, device, recipe.model.trust_remote_code)
    evaluation = evaluate_and_report(recipe, model, tokenizer, data_dir, reporter, target / "eval.json",
                                     reference_model=reference, model_label=str(target),
                                     title="target model after finetuning")
    return {"models": results, "target_metrics": evaluation["aggregates"]}
