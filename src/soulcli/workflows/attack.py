"""attack: does the unlearning last? Relearning, quantization and probing on any task.

Top to bottom: resolve the run (or model), the target and the retain reference; measure the
task's headline metrics on the unlearned and the target model; then each attack on a copy of
the unlearned model (the model on disk is hashed before and after: it is never modified):

* relearn: finetune the copy (the finetuning loop, :func:`soulcli.workflows.finetune.train_lm`,
  with ``attack.relearn``'s lr, batch size and weight decay at a constant lr) on a seeded
  ``fraction`` of the forget set (or of a file's records), measuring after each of
  ``attack.relearn.steps``;
* quantize: round the copy's Linear weights (:func:`soulcli.attacks.quantize_linears`) to each
  of ``attack.quantize.bits``;
* probe: the unlearned model on the task's reworded / few-shot forget prompts
  (:meth:`soulcli.tasks.Task.probe`), measuring the headline metrics those prompts change.

Writes ``attack.json`` (atomically; layout in the README), ``attack.png``, prints a table and
returns the flat gate view (:func:`soulcli.attacks.recovery.recovery_view`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Sequence

import torch

from soulcli.attacks.recovery import gate_names, point, recovery_view
from soulcli.data.io import write_json
from soulcli.engine.progress import Reporter
from soulcli.errors import UserError
from soulcli.recipe import FinetuneConfig, Recipe, load_recipe
from soulcli.tasks import TrainSet
from soulcli.tasks.base import QA, TEXT
from soulcli.workflows import artifacts, common
from soulcli.workflows.evaluate import eval_config, reference_stats, run_folder

Values = dict[str, float | None]


def labels(recipe: Recipe) -> list[str]:
    """The attack points a recipe's ``attack`` section runs, in order (relearn25, quantize4, ...)."""
    a = recipe.attack
    out: list[str] = []
    if "relearn" in a.attacks:
        out += [f"relearn{s}" for s in sorted(set(a.relearn.steps))]
    if "quantize" in a.attacks:
        out += [f"quantize{b}" for b in a.quantize.bits]
    if "probe" in a.attacks:
        out += list(a.probe.kinds)
    return out


def relearn_set(recipe: Recipe, data_dir: Path) -> TrainSet:
    """What the relearning attack trains on: the records of ``attack.relearn.data`` (all
    question-answer or all text rows), else the task's forget set."""
    from soulcli.data.tofu import read_records

    path = recipe.attack.relearn.data
    if path is None:
        return common.task_of(recipe).unlearn_sets(data_dir)[0]
    rows = read_records(path)[0]
    for kind, fields in ((QA, ("question", "answer")), (TEXT, ("text",))):
        if rows and all(isinstance(r, dict) and all(isinstance(r.get(f), str) for f in fields) for r in rows):
            return TrainSet(Path(path).name, kind, rows)
    raise UserError(f"attack.relearn.data: {path} must hold records that all have 'question' and "
                    "'answer' strings, or all a 'text' string")


def relearn_subset(forget: TrainSet, fraction: float, seed: int) -> TrainSet:
    """A seeded ``fraction`` of the forget records (at least one), in their original order."""
    n = max(1, round(fraction * len(forget.rows)))
    chosen = sorted(torch.randperm(len(forget.rows), generator=torch.Generator().manual_seed(seed))[:n].tolist())
    return TrainSet(f"{forget.name} ({n} of {len(forget.rows)})", forget.kind, [forget.rows[i] for i in chosen])


def _file_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        h.update(f.read_bytes())
    return h.hexdigest()


class _Meter:
    """The headline metrics of a model on a set of splits, against the retain reference."""

    def __init__(self, recipe: Recipe, tokenizer, reference: dict | None) -> None:
        self.recipe, self.tokenizer, self.reference = recipe, tokenizer, reference
        self.task = common.task_of(recipe, tokenizer)
        self.suite = self.task.suite(eval_config(recipe))
        self.tracked = self.task.headline.tracked

    def __call__(self, model, splits, names: Sequence[str] | None = None) -> tuple[Values, dict[str, str]]:
        from soulcli.eval import evaluate_model

        model.eval()
        result = evaluate_model(model, self.tokenizer, self.suite, splits,
                                eval_config(self.recipe, tuple(names or self.tracked)), reference=self.reference)
        metrics = result["metrics"]
        return ({n: m["value"] for n, m in metrics.items()},
                {n: m["unavailable"] for n, m in metrics.items() if m.get("unavailable")})

    def reading(self, changed: set[str]) -> list[str]:
        """The tracked metrics computed, directly or through their inputs, from ``changed`` splits."""
        from soulcli.eval.evaluate import with_dependencies

        return [n for n in self.tracked
                if any(set(self.suite[d].reads) & changed for d in with_dependencies(self.suite, [n]))]


def _relearn(recipe: Recipe, model, tokenizer, data_dir: Path, meter: _Meter, unlearned: Values,
             target: Values, reporter: Reporter, device) -> dict[str, Any]:
    from soulcli.workflows.finetune import train_lm

    r = recipe.attack.relearn
    steps = sorted(set(r.steps))
    forget = relearn_subset(relearn_set(recipe, data_dir), r.fraction, recipe.seed)
    per_epoch = -(-len(forget.rows) // r.batch_size)
    settings = FinetuneConfig(epochs=max(1, -(-steps[-1] // per_epoch)), lr=r.lr or recipe.finetune.lr,
                              min_lr_ratio=1.0, warmup_steps=0, batch_size=r.batch_size,
                              weight_decay=r.weight_decay, max_grad_norm=r.max_grad_norm, max_steps=steps[-1])
    splits = meter.task.eval_splits(data_dir)
    points: list[dict] = []

    def measure(done: int) -> None:
        if done in steps:
            values, reasons = meter(attacked, splits) if done else (unlearned, {})
            points.append(point(f"relearn{done}", values, reasons, unlearned, target, step=done))

    measure(0)
    if steps[-1] > 0:
        attacked = copy.deepcopy(model)
        train_lm(attacked, tokenizer, forget, recipe, reporter, "relearn", device, recipe.seed,
                 settings=settings, on_step_end=measure)
        del attacked
    about = {"split": forget.name, "items": len(forget.rows), "fraction": r.fraction, "lr": settings.lr,
             "batch_size": r.batch_size, "weight_decay": r.weight_decay, "steps": steps}
    return {**about, "points": points}


def _quantize(recipe: Recipe, model, meter: _Meter, splits, unlearned: Values, target: Values) -> dict[str, Any]:
    from soulcli.attacks import quantize_linears

    q = recipe.attack.quantize
    points, layers = [], []
    for bits in q.bits:
        attacked = copy.deepcopy(model)
        layers = quantize_linears(attacked, bits, q.group_size)
        values, reasons = meter(attacked, splits)
        points.append(point(f"quantize{bits}", values, reasons, unlearned, target, bits=bits))
        del attacked
    return {"method": "round-to-nearest, asymmetric, integer zero point", "group_size": q.group_size,
            "layers": layers, "points": points}


def _probe(recipe: Recipe, model, meter: _Meter, splits, unlearned: Values, target: Values) -> dict[str, Any]:
    from soulcli.eval.metric import Unavailable

    p = recipe.attack.probe
    points = []
    for kind in p.kinds:
        try:
            probed = meter.task.probe(kind, splits, p.shots)
        except Unavailable as exc:
            points.append({"label": kind, "probe": kind, "unavailable": str(exc)})
            continue
        changed = {name for name, rows in probed.items() if rows is not splits.get(name)}
        try:
            values, reasons = meter(model, probed, meter.reading(changed))
        except UserError as exc:  # a few-shot prompt too long for the model's context
            points.append({"label": kind, "probe": kind, "unavailable": f"{exc} (or lower attack.probe.shots)"})
            continue
        points.append(point(kind, values, reasons, unlearned, target, probe=kind))
    return {"shots": p.shots, "points": points}


def run_attack(recipe: Recipe | None, reporter: Reporter, run_dir: Path | None, model_path: str | None,
               output: Path | None, overrides: list[str] | None = None,
               gates: Sequence[str] = ()) -> dict[str, Any]:
    """`soul attack RUN_DIR` or `soul attack --model PATH`: every attack of ``attack.attacks``;
    the ``gates``' names are checked before any work. Returns the report with its gate view."""
    import json

    from soulcli.eval.report import parse_gate
    from soulcli.models.loading import load_model

    target_dir = None
    if run_dir is not None:
        recipe, model_path = run_folder(run_dir, recipe, overrides)
        summary = run_dir / "summary.json"
        if summary.is_file():
            target_dir = json.loads(summary.read_text()).get("target_model")
    if model_path is None:
        raise UserError("nothing to attack: pass a RUN_DIR or --model PATH")
    if recipe is None:
        recipe = load_recipe(None, overrides)
    out_dir = Path(output or run_dir or model_path)
    task = common.task_of(recipe)
    names = gate_names(task.headline.tracked, labels(recipe))
    for name in gates:
        parse_gate(f"{name}=0", names)
    device = common.setup_runtime(recipe)
    data_dir, builtin_target = artifacts.target_model_path(recipe, reporter)
    target_dir = Path(target_dir) if target_dir and Path(target_dir).is_dir() else builtin_target
    ref_model = artifacts.reference_model_path(recipe, reporter, data_dir)
    reference = reference_stats(recipe, ref_model, data_dir, reporter, device) if ref_model else None
    model, tokenizer = load_model(model_path, recipe.model.dtype, device, recipe.model.trust_remote_code)
    before = _file_hash(Path(model_path))
    meter = _Meter(recipe, tokenizer, reference)
    splits = task.eval_splits(data_dir)

    reporter.info(f"Measuring {', '.join(meter.tracked)} on the unlearned model and the target {target_dir}")
    unlearned, unlearned_why = meter(model, splits)
    target_model, _ = load_model(str(target_dir), recipe.model.dtype, device, recipe.model.trust_remote_code)
    target, _ = meter(target_model, splits)
    del target_model
    report: dict[str, Any] = {"model": model_path, "target_model": str(target_dir), "task": recipe.task,
                              "data": str(data_dir), "metrics": list(meter.tracked),
                              "unlearned": unlearned, "target": target, "null_reasons": unlearned_why}
    a = recipe.attack
    if "relearn" in a.attacks:
        reporter.info(f"Relearning attack: steps {sorted(set(a.relearn.steps))}, {a.relearn.fraction:g} of the forget set")
        report["relearn"] = _relearn(recipe, model, tokenizer, data_dir, meter, unlearned, target, reporter, device)
    if "quantize" in a.attacks:
        reporter.info(f"Quantization attack: {', '.join(f'{b}-bit' for b in a.quantize.bits)}")
        report["quantize"] = _quantize(recipe, model, meter, splits, unlearned, target)
    if "probe" in a.attacks:
        reporter.info(f"Probing attack: {', '.join(a.probe.kinds)}")
        report["probe"] = _probe(recipe, model, meter, splits, unlearned, target)
    if _file_hash(Path(model_path)) != before:
        raise RuntimeError(f"the attacked model's files in {model_path} changed")  # a bug, not a user error
    points = [p for kind in ("relearn", "quantize", "probe") if kind in report for p in report[kind]["points"]]
    report["gates"] = {k: v["value"] for k, v in recovery_view(unlearned, target, points).items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    report["attack_json"] = str(write_json(out_dir / "attack.json", report))
    report["plot"] = str(plot(report, task.headline, out_dir / "attack.png"))
    if not reporter.quiet:
        render_table(report, reporter.console)
    return {"report": report, "view": recovery_view(unlearned, target, points)}


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2e}" if 0 < abs(v) < 1e-2 else f"{v:.3f}"


def render_table(report: dict[str, Any], console) -> None:
    """One row per model (target, unlearned, each attack point): the headline metrics, and the
    recovered share of the forget metric."""
    from rich.table import Table

    metrics = report["metrics"]
    table = Table(title=f"attack of {report['model']} (recovered: share of the target-unlearned gap)")
    table.add_column("model", style="bold")
    for m in metrics:
        table.add_column(m, justify="right")
    table.add_column(f"recovered {metrics[0]}", justify="right")
    table.add_row("target", *(_fmt(report["target"].get(m)) for m in metrics), "1")
    table.add_row("unlearned", *(_fmt(report["unlearned"].get(m)) for m in metrics), "0")
    notes = []
    for kind in ("relearn", "quantize", "probe"):
        for p in report.get(kind, {}).get("points", []):
            if "unavailable" in p:
                notes.append(f"{p['label']}: unavailable: {p['unavailable']}")
                continue
            table.add_row(p["label"], *(_fmt(p["metrics"].get(m)) for m in metrics),
                          _fmt(p["recovered"].get(metrics[0])))
    table.caption = "; ".join(notes) or None
    console.print(table)


def plot(report: dict[str, Any], headline, path: Path) -> Path:
    """attack.png: the forget and utility metrics against relearning steps (the relearned model's
    curve), the target and each quantized model as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    relearn = [p for p in report.get("relearn", {}).get("points", [])]
    for ax, name in zip(axes, (headline.forget, headline.utility)):
        if relearn:
            ax.plot([p["step"] for p in relearn], [p["metrics"].get(name) for p in relearn], marker="o",
                    label="relearned")
        lines = [("target", report["target"].get(name), "grey", "--")]
        lines += [(f"{p['bits']}-bit", p["metrics"].get(name), "tab:red", ls)
                  for p, ls in zip(report.get("quantize", {}).get("points", []), [":", "-.", (0, (1, 3))] * 3)]
        for label, value, color, ls in lines:
            if value is not None:
                ax.axhline(value, color=color, ls=ls, label=label)
        if name == headline.forget and headline.forget_log_scale:
            ax.set_yscale("log")
        ax.set_xlabel("relearning steps")
        ax.set_title(name)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"attack of {report['model']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
