"""compare-optimizers: the SOUL experiment (optimizer x objective x learning rate) in one run.

Every cell starts from the same target model, with the same batch plan and seed, and is
evaluated every ``eval.eval_every`` steps. Per optimizer x objective the setting (learning
rate, step) with the highest forget quality among those keeping model utility at least
``compare.utility_ratio`` x the target's is selected (mean over seeds). Finished cells are
stored in ``cells/`` and never recomputed, so an interrupted comparison resumes (``--overwrite``
starts it over). A cell whose training diverges (non-finite loss or gradient) is stored as
diverged, with no evaluations, so it is never selected.

``compare.seed_policy``: ``all`` runs every learning rate with every seed; ``selected`` runs
the learning-rate grid on the first seed, picks the learning rate per optimizer x objective by
the same rule on that seed, runs only that learning rate on the other seeds, and then picks the
step by the mean over all seeds at that learning rate (the spread reported is over all seeds;
the learning rate itself was tuned on the first seed only, which the stated rule says).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from soulcli.engine.memory import PeakMemory
from soulcli.engine.progress import Reporter
from soulcli.data.io import atomic_write, open_resumable_dir, output_lock, write_json
from soulcli.engine.rundir import versions
from soulcli.errors import DivergedError
from soulcli.recipe import Recipe, recipe_to_dict, replace
from soulcli.workflows import artifacts, common
from soulcli.workflows.evaluate import eval_config, reference_stats
from soulcli.workflows.unlearn import PreparedRun, unlearn_model

TRACKED = ("forget_quality", "model_utility", "forget_rougeL_recall", "retain_rougeL_recall",
           "forget_truth_ratio")
SECOND_ORDER = {"sophiag", "sophiah", "adahessian", "influence"}


@dataclass(frozen=True)
class Cell:
    objective: str
    optimizer: str  # an optimizer name, or "influence" for the one-shot baseline
    lr: float | None
    seed: int

    @property
    def id(self) -> str:
        lr = "oneshot" if self.lr is None else f"lr{self.lr:.0e}"
        return f"{self.objective}-{self.optimizer}-{lr}-s{self.seed}"


def grid(recipe: Recipe, seeds: tuple[int, ...] | None = None) -> list[Cell]:
    """Every cell of the grid, with ``seeds`` (default: ``compare.seeds``)."""
    c = recipe.compare
    seeds = c.seeds if seeds is None else seeds
    lrs = c.lr_grid or (recipe.optimizer.lr,)
    cells = [Cell(obj, opt, lr, seed) for obj in c.objectives for opt in c.optimizers
             for lr in lrs for seed in seeds]
    if c.include_influence:
        cells += [Cell("ga", "influence", None, seed) for seed in seeds]
    return cells


def follow_up_cells(selected: list[dict], seeds: tuple[int, ...]) -> list[Cell]:
    """The selected learning rate of each optimizer x objective, on ``seeds``."""
    return [Cell(s["objective"], s["optimizer"], s["lr"], seed) for s in selected for seed in seeds]


def at_selected_lr(cells: list[dict], selected: list[dict]) -> list[dict]:
    """The cells that ran the learning rate selected for their optimizer x objective."""
    chosen = {(s["objective"], s["optimizer"]): s["lr"] for s in selected}
    return [c for c in cells if chosen.get((c["objective"], c["optimizer"]), object()) == c["lr"]]


def cell_recipe(recipe: Recipe, cell: Cell) -> Recipe:
    """The base recipe with the cell's optimizer, objective, learning rate and seed.

    Optimizer ``args`` and ``objective_args`` carry over only where the new optimizer /
    objective takes them (rho means nothing to AdamW).
    """
    from soulcli.objectives import objective_hparams
    from soulcli.optim import optimizer_hparams

    if cell.optimizer == "influence":
        return replace(recipe, seed=cell.seed, unlearn={"method": "influence", "objective": "ga"})
    known = optimizer_hparams(cell.optimizer)
    args = {k: v for k, v in recipe.optimizer.args.items() if k in known}
    okeys = objective_hparams(cell.objective)
    oargs = {k: v for k, v in recipe.unlearn.objective_args.items() if k in okeys}
    return replace(recipe, seed=cell.seed,
                   optimizer={"name": cell.optimizer, "lr": cell.lr, "args": args},
                   unlearn={"objective": cell.objective, "objective_args": oargs, "method": "iterative"})


def run_cell(recipe: Recipe, cell: Cell, data_dir: Path, target_dir: Path, reference: dict | None,
             reporter: Reporter, device: torch.device, eval_every: int) -> dict[str, Any]:
    """Unlearn from the target model with the cell's settings, evaluating along the way."""
    from soulcli.eval import evaluate_model
    from soulcli.models.loading import apply_adapter, load_model

    r = cell_recipe(recipe, cell)
    common.setup_runtime(r)
    model, tokenizer = load_model(str(target_dir), r.model.dtype, device, r.model.trust_remote_code)
    model = apply_adapter(model, r.model.adapter, r.model.lora)
    splits = common.eval_splits(data_dir, r)
    cfg = eval_config(r, TRACKED)
    evaluations: list[dict[str, Any]] = []
    total = {"steps": None}

    def evaluate(step: int) -> None:
        res = evaluate_model(model, tokenizer, common.template_of(r), splits, cfg, reference=reference)
        evaluations.append({"step": step, **{k: res["metrics"][k].get("value") for k in TRACKED}})

    def on_step_end(step: int) -> None:
        if step % eval_every == 0:
            evaluate(step)

    with PeakMemory(device) as mem:
        record = unlearn_model(PreparedRun(r, model, tokenizer, data_dir, target_dir, device), reporter,
                               on_step_end=on_step_end if cell.optimizer != "influence" else None)
    total["steps"] = record["steps"]
    if not evaluations or evaluations[-1]["step"] != record["steps"]:
        evaluate(record["steps"])
    rows = record["rows"]
    step_times = [row["step_seconds"] for row in rows if "step_seconds" in row]
    win = [row["win_rate"] for row in rows if "win_rate" in row]
    return {
        **asdict(cell), "id": cell.id, "steps": record["steps"],
        "seconds": record["seconds"],
        "time_per_step": statistics.mean(step_times) if step_times else record["seconds"],
        "peak_memory_mb": round(mem.peak_mb, 1),
        "mean_win_rate": statistics.mean(win) if win else None,
        "evaluations": evaluations,
    }


def select(cells: list[dict], target_utility: float, ratio: float) -> list[dict[str, Any]]:
    """Per optimizer x objective: the (lr, step) with the best mean forget quality among the
    settings whose mean model utility is >= ratio x the target's; seeds give the spread."""
    groups: dict[tuple[str, str], dict[tuple[Any, int], list[dict]]] = {}
    for c in cells:
        for ev in c["evaluations"]:
            groups.setdefault((c["objective"], c["optimizer"]), {}).setdefault((c["lr"], ev["step"]), []).append(
                {**ev, "seed": c["seed"], "mean_win_rate": c["mean_win_rate"], "time_per_step": c["time_per_step"],
                 "peak_memory_mb": c["peak_memory_mb"]})
    out = []
    floor = ratio * target_utility
    for (objective, optimizer), settings in groups.items():
        best = None
        for (lr, step), evs in settings.items():
            fq = [e["forget_quality"] for e in evs if e["forget_quality"] is not None]
            mu = [e["model_utility"] for e in evs if e["model_utility"] is not None]
            if not fq or not mu:
                continue
            cand = {"lr": lr, "step": step, "fq": statistics.mean(fq), "mu": statistics.mean(mu), "evs": evs}
            eligible = cand["mu"] >= floor
            # eligible: best forget quality; if none is, the one closest to the utility floor
            key = (True, cand["fq"], cand["mu"]) if eligible else (False, cand["mu"], cand["fq"])
            if best is None or key > best[0]:
                best = (key, cand)
        if best is None:
            continue
        cand = best[1]
        evs = cand["evs"]

        def spread(name: str) -> dict[str, float | None]:
            vals = [e[name] for e in evs if e.get(name) is not None]
            if not vals:
                return {"mean": None, "std": None, "min": None, "max": None}
            return {"mean": statistics.mean(vals), "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
                    "min": min(vals), "max": max(vals)}

        out.append({
            "objective": objective, "optimizer": optimizer, "lr": cand["lr"], "step": cand["step"],
            "meets_utility_rule": best[0][0], "seeds": [e["seed"] for e in evs],
            **{name: spread(name) for name in TRACKED},
            "mean_win_rate": spread("mean_win_rate")["mean"],
            "time_per_step": spread("time_per_step")["mean"],
            "peak_memory_mb": spread("peak_memory_mb")["mean"],
        })
    return out


def results_csv(cells: list[dict]) -> str:
    buf = io.StringIO()
    fields = ["objective", "optimizer", "lr", "seed", "step", *TRACKED, "time_per_step", "peak_memory_mb",
              "mean_win_rate"]
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for c in cells:
        for ev in c["evaluations"]:
            w.writerow({**{k: c[k] for k in ("objective", "optimizer", "lr", "seed", "time_per_step",
                                             "peak_memory_mb", "mean_win_rate")}, **ev})
    return buf.getvalue()


def plot(cells: list[dict], selected: list[dict], target: dict, out_dir: Path) -> list[str]:
    """The SOUL teaser (forget quality vs model utility) and the curves over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    objectives = sorted({s["objective"] for s in selected})
    optimizers = sorted({s["optimizer"] for s in selected}, key=lambda o: (o in SECOND_ORDER, o))
    markers = {o: m for o, m in zip(objectives, "osD^v<>p*")}
    colors = {o: plt.get_cmap("tab10")(i % 10) for i, o in enumerate(optimizers)}
    for s in selected:
        so = s["optimizer"] in SECOND_ORDER
        ax.scatter(s["model_utility"]["mean"], max(s["forget_quality"]["mean"], 1e-30),
                   marker=markers[s["objective"]], s=80, color=colors[s["optimizer"]],
                   edgecolor="black", linewidth=1.6 if so else 0.6, zorder=3)
    ax.axvline(target["model_utility"], color="grey", ls="--", lw=1)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=colors[o], markeredgecolor="black",
                      label=f"{o} ({'SO' if o in SECOND_ORDER else 'FO'})") for o in optimizers]
    handles += [Line2D([], [], ls="", marker=markers[o], color="white", markeredgecolor="black", label=o)
                for o in objectives]
    handles.append(Line2D([], [], color="grey", ls="--", label="target model utility"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("model utility (mean over seeds)")
    ax.set_ylabel("forget quality (KS p-value, log scale)")
    ax.set_title("Forget quality vs model utility, selected setting per optimizer x objective", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "fq_vs_mu.png", dpi=130)
    plt.close(fig)
    files.append("fq_vs_mu.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    # colour = optimizer (as in the teaser), line style and marker = objective
    styles = {o: ls for o, ls in zip(objectives, ["-", "--", ":", "-."] * 3)}
    for s in selected:
        runs = [c for c in cells if c["objective"] == s["objective"] and c["optimizer"] == s["optimizer"]
                and c["lr"] == s["lr"] and c["seed"] == s["seeds"][0]]
        if not runs:
            continue
        evs = [{"step": 0, **{k: target[k] for k in TRACKED}}] + runs[0]["evaluations"]
        steps = [e["step"] for e in evs]
        kind = "SO" if s["optimizer"] in SECOND_ORDER else "FO"
        label = f"{s['optimizer']} ({kind}) / {s['objective']}"
        look = dict(color=colors[s["optimizer"]], ls=styles[s["objective"]], marker=markers[s["objective"]],
                    markersize=4, label=label)
        axes[0].plot(steps, [max(e["forget_quality"] or 1e-30, 1e-30) for e in evs], **look)
        axes[1].plot(steps, [e["model_utility"] for e in evs], **look)
    axes[0].set_yscale("log")
    axes[0].set_title("forget quality over steps (selected lr, first seed)")
    axes[1].set_title("model utility over steps")
    for ax in axes:
        ax.set_xlabel("step")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=130)
    plt.close(fig)
    files.append("curves.png")
    return files


def render_table(selected: list[dict], target: dict, rule: str, console) -> None:
    from rich.table import Table

    def fmt(v: Any, digits: int = 3) -> str:
        if v is None:
            return "-"
        return f"{v:.2e}" if isinstance(v, float) and 0 < abs(v) < 1e-2 else f"{v:.{digits}f}"

    table = Table(title=f"compare-optimizers ({rule})")
    for col in ("objective", "type", "optimizer", "lr", "step", "FQ mean [min, max]", "MU", "forget R-L",
                "retain R-L", "win rate", "s/step"):
        table.add_column(col)
    table.add_row("target", "-", "-", "-", "0", fmt(target["forget_quality"]), fmt(target["model_utility"]),
                  fmt(target["forget_rougeL_recall"]), fmt(target["retain_rougeL_recall"]), "-", "-")
    for s in sorted(selected, key=lambda s: (s["objective"], s["optimizer"] in SECOND_ORDER, s["optimizer"])):
        fq = s["forget_quality"]
        table.add_row(
            s["objective"], "SO" if s["optimizer"] in SECOND_ORDER else "FO", s["optimizer"],
            "-" if s["lr"] is None else f"{s['lr']:g}", str(s["step"]),
            f"{fmt(fq['mean'])} [{fmt(fq['min'])}, {fmt(fq['max'])}]" + ("" if s["meets_utility_rule"] else " *"),
            fmt(s["model_utility"]["mean"]), fmt(s["forget_rougeL_recall"]["mean"]),
            fmt(s["retain_rougeL_recall"]["mean"]), fmt(s["mean_win_rate"]), fmt(s["time_per_step"]))
    console.print(table)


def run_compare(recipe: Recipe, reporter: Reporter, output: Path | None = None,
                overwrite: bool = False) -> dict[str, Any]:
    """The whole `soul compare-optimizers` command, holding the output folder's lock: an earlier
    comparison there is resumed (or, with ``overwrite``, started over); any other non-empty
    folder is refused."""
    out_dir = Path(output or recipe.output_dir or Path("runs") / f"{recipe.name}_compare")
    with output_lock(out_dir):
        if open_resumable_dir(out_dir, resume_if="cells", overwrite=overwrite):
            reporter.info(f"Resuming the comparison in {out_dir} (finished cells are reused; "
                          "--overwrite starts over)")
        return compare_into(recipe, reporter, out_dir)


def compare_into(recipe: Recipe, reporter: Reporter, out_dir: Path) -> dict[str, Any]:
    from soulcli.eval import evaluate_model
    from soulcli.models.loading import load_model

    device = common.setup_runtime(recipe)
    cells_dir = out_dir / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    data_dir, target_dir = artifacts.target_model_path(recipe, reporter)
    ref_dir = artifacts.reference_model_path(recipe, reporter, data_dir)
    reference = reference_stats(recipe, ref_dir, data_dir, reporter, device) if ref_dir else None

    target_file = cells_dir / "target.json"
    if target_file.is_file():
        target = json.loads(target_file.read_text())
    else:
        model, tokenizer = load_model(str(target_dir), recipe.model.dtype, device,
                                       recipe.model.trust_remote_code)
        res = evaluate_model(model, tokenizer, common.template_of(recipe), common.eval_splits(data_dir, recipe),
                             eval_config(recipe, TRACKED), reference=reference)
        target = {k: res["metrics"][k].get("value") for k in TRACKED}
        write_json(target_file, target)

    from soulcli.data.tofu import forget_split_names

    n_forget = len(common.load_split(data_dir, forget_split_names(common.forget_pct(recipe))[0]))
    steps = recipe.unlearn.max_steps or recipe.unlearn.epochs * -(-n_forget // recipe.unlearn.batch_size)
    eval_every = recipe.eval.eval_every or max(1, steps // 5)
    c = recipe.compare
    staged = c.seed_policy == "selected" and len(c.seeds) > 1
    cells = grid(recipe, c.seeds[:1] if staged else c.seeds)
    groups = len({(cell.objective, cell.optimizer) for cell in cells})
    total = len(cells) + (groups * (len(c.seeds) - 1) if staged else 0)
    reporter.info(f"Comparing {total} cells ({steps} steps each, evaluated every {eval_every} steps) in {out_dir}")
    results: list[dict] = []
    with reporter.task("grid", total) as task:

        def run_all(todo: list[Cell]) -> None:
            for cell in todo:
                path = cells_dir / f"{cell.id}.json"
                if path.is_file():
                    results.append(json.loads(path.read_text()))
                    task.update(1, cell=f"{cell.id} (done before)")
                    continue
                reporter.info(f"cell {cell.id}")
                try:
                    res = run_cell(recipe, cell, data_dir, target_dir, reference, reporter, device, eval_every)
                except DivergedError as exc:
                    reporter.info(f"[yellow]warning:[/] cell {cell.id} diverged ({exc}); recorded, never selected")
                    res = {**asdict(cell), "id": cell.id, "diverged": str(exc), "evaluations": []}
                write_json(path, res)
                results.append(res)
                task.update(1, cell=cell.id)

        run_all(cells)
        if staged:
            tuned = select(results, target["model_utility"], c.utility_ratio)
            run_all(follow_up_cells(tuned, c.seeds[1:]))

    seeds_text = (f"lr chosen on seed {c.seeds[0]}, step by the mean over seeds {list(c.seeds)} at that lr"
                  if staged else f"mean over seeds {list(c.seeds)}")
    rule = (f"selected per optimizer x objective: best forget quality with model utility >= "
            f"{c.utility_ratio:g} x target's {target['model_utility']:.3f}; {seeds_text}; "
            f"* = no setting met the rule, best utility shown")
    pool = at_selected_lr(results, tuned) if staged else results
    selected = select(pool, target["model_utility"], c.utility_ratio)
    diverged = [c["id"] for c in results if c.get("diverged")]
    summary = {"rule": rule, "target": target, "target_model": str(target_dir), "data": str(data_dir),
               "selected": selected, "diverged": diverged, "cells": results, "recipe": recipe_to_dict(recipe), "versions": versions()}
    write_json(out_dir / "results.json", summary)
    atomic_write(out_dir / "results.csv", results_csv(results))
    plots = plot(results, selected, target, out_dir)
    if not reporter.quiet:
        render_table(selected, target, rule, reporter.console)
        reporter.info(f"Results in {out_dir}: results.json, results.csv, {', '.join(plots)}")
    return {"path": str(out_dir), "rule": rule, "target": target, "selected": selected, "diverged": diverged}
