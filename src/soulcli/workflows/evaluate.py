"""evaluate: TOFU's metrics for a run folder or any model, against the retain reference."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from soulcli.engine.progress import Reporter
from soulcli.engine.rundir import versions, write_json
from soulcli.errors import UserError
from soulcli.recipe import Recipe, load_recipe, recipe_to_dict
from soulcli.workflows import common


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
    """The retain model's per-item values, computed once and cached beside that model."""
    from soulcli.eval import evaluate_model, reference_from_result
    from soulcli.models.loading import load_model

    key = common.short_hash([str(data_dir.resolve()), recipe.data.forget_split, asdict(recipe.data.template),
                             recipe.data.max_length, recipe.eval.max_new_tokens])
    cache = reference_model / f"reference-{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    reporter.info(f"Evaluating the retain reference model {reference_model} (cached for later runs)")
    model, tokenizer = load_model(str(reference_model), recipe.model.dtype, device)
    model.eval()
    splits = common.eval_splits(data_dir, recipe)
    result = evaluate_model(model, tokenizer, common.template_of(recipe), splits,
                            eval_config(recipe, ("forget_truth_ratio", "mia_loss_auc", "mia_zlib_auc",
                                                 "mia_mink_auc", "mia_minkpp_auc")),
                            progress=_progress(reporter))
    ref = reference_from_result(result)
    tmp = cache.with_suffix(".json.partial")
    tmp.write_text(json.dumps(ref))
    tmp.replace(cache)
    return ref


def aggregates(result: dict) -> dict[str, float | None]:
    return {name: m.get("value") for name, m in result["metrics"].items()}


def evaluate_and_report(recipe: Recipe, model, tokenizer, data_dir: Path, reporter: Reporter,
                        out_path: Path | None, *, reference_model: Path | None = None,
                        reference: dict | None = None, model_label: str = "",
                        metrics: tuple[str, ...] | None = None, title: str = "evaluation") -> dict[str, Any]:
    """Evaluate ``model``, write ``out_path`` (eval.json) and print the summary table."""
    from soulcli.eval import evaluate_model
    from soulcli.eval.report import render_summary

    device = next(model.parameters()).device
    if reference is None and reference_model is not None:
        reference = reference_stats(recipe, reference_model, data_dir, reporter, device)
    splits = common.eval_splits(data_dir, recipe)
    model.eval()
    result = evaluate_model(model, tokenizer, common.template_of(recipe), splits,
                            eval_config(recipe, metrics), reference=reference, progress=_progress(reporter))
    result.update({
        "model": model_label, "data": str(data_dir),
        "reference": str(reference_model) if reference_model else ("given" if reference else None),
        "recipe": recipe_to_dict(recipe), "versions": versions(),
    })
    if out_path is not None:
        write_json(out_path, result)
    if not reporter.quiet:
        reporter.console.print(f"[bold]{title}[/]")
        render_summary(result, reporter.console)
    return {"aggregates": aggregates(result), "result": result}


def _load_reference(arg: str | None, recipe: Recipe, reporter: Reporter, data_dir: Path,
                    device) -> tuple[Path | None, dict | None]:
    if arg is None:
        return common.reference_model_path(recipe, reporter, data_dir), None
    path = Path(arg)
    if path.is_file() and path.suffix == ".json":
        from soulcli.eval import reference_from_result

        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"--reference {path}: not valid JSON (line {exc.lineno}); pass an eval.json") from None
        return None, data if "metrics" not in data else reference_from_result(data)
    from soulcli.models.loading import resolve_model_path

    return Path(resolve_model_path(arg)), None


def run_evaluate(recipe: Recipe | None, reporter: Reporter, run_dir: Path | None, model_path: str | None,
                 data: str | None, reference: str | None, metrics: tuple[str, ...] | None,
                 output: Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """`soul evaluate RUN_DIR` or `soul evaluate --model PATH [--data DIR]`."""
    from soulcli.models.loading import load_model

    if run_dir is not None:
        if not run_dir.is_dir():
            raise UserError(f"run folder '{run_dir}' does not exist; pass a folder written by `soul unlearn`")
        if not (run_dir / "model" / "config.json").is_file():
            raise UserError(f"'{run_dir}' has no model/ folder; pass a run folder from `soul unlearn` or use --model")
        if recipe is None and (run_dir / "resolved_recipe.yaml").is_file():
            recipe = load_recipe(run_dir / "resolved_recipe.yaml", overrides)
        model_path = str(run_dir / "model")
        output = output or run_dir / "eval.json"
    if model_path is None:
        raise UserError("nothing to evaluate: pass a RUN_DIR or --model PATH")
    if recipe is None:
        recipe = load_recipe(None, overrides)
    if data is not None:
        from soulcli.recipe import replace

        recipe = replace(recipe, data={"source": data})
    device = common.setup_runtime(recipe)
    data_dir = common.benchmark_dir(recipe, reporter)
    ref_model, ref_data = _load_reference(reference, recipe, reporter, data_dir, device)
    model, tokenizer = load_model(model_path, recipe.model.dtype, device)
    output = output or Path(model_path) / "eval.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.partial")
    out = evaluate_and_report(recipe, model, tokenizer, data_dir, reporter, tmp,
                              reference_model=ref_model, reference=ref_data, model_label=model_path,
                              metrics=metrics, title=f"evaluation of {model_path}")
    tmp.replace(output)
    out["path"] = str(output)
    return out
