"""compare-optimizers: the SOUL experiment (optimizer x objective x learning rate) in one run.

Every cell starts from the same target model, with the same batch plan and seed, and is
evaluated every ``unlearn.eval_every`` steps on the task's headline metrics
(:class:`soulcli.tasks.Headline`, by :mod:`soulcli.workflows.tracking`). Per optimizer x
objective the setting (learning rate, step) with the best forget metric (TOFU: the highest
forget quality; MUSE: the lowest forget VerbMem) among those keeping the utility metric (TOFU:
model utility; MUSE: retain KnowMem) at least ``compare.utility_ratio`` x the target's is
selected (mean over seeds; the rule of :func:`soulcli.workflows.tracking.rank`).

Finished cells are stored in ``cells/`` under names that spell their exact settings
(:attr:`Cell.id`), with their resolved settings and the fingerprints of the data, target and
reference (:func:`cell_settings`): an interrupted comparison resumes, reusing a finished cell
only when these match and running it again (a log line names what changed) when not;
``--overwrite`` starts it over. A cell whose training diverges (non-finite loss or gradient)
is stored as diverged, with no evaluations, so it is never selected.

``compare.seed_policy``: ``all`` runs every learning rate with every seed; ``selected`` runs
the learning-rate grid on the first seed, picks the learning rate per optimizer x objective by
the same rule on that seed, runs only that learning rate on the other seeds, and then picks the
step by the mean over all seeds at that learning rate (the spread reported is over all seeds;
the learning rate itself was tuned on the first seed only, which the stated rule says).

``compare.attacks`` (``--attacks relearn,quantize``): after selection, the model of each selected
optimizer x objective at its selected step is re-created per seed and attacked with `soul
attack`'s code (:func:`attack_selected`); the attack values join the table, ``results.csv``
and ``robustness.png``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from soulcli.engine.memory import PeakMemory
from soulcli.engine.progress import Reporter
from soulcli.data.io import atomic_write, open_resumable_dir, output_lock, to_json, write_json
from soulcli.engine.rundir import versions
from soulcli.errors import DivergedError
from soulcli.recipe import Recipe, recipe_to_dict, replace
from soulcli.tasks import Headline
from soulcli.workflows import artifacts, common, provenance, tracking
from soulcli.workflows.evaluate import reference_stats
from soulcli.workflows.unlearn import PreparedRun, unlearn_model

Values = dict[str, float | None]

SECOND_ORDER = {"sophiag", "sophiah", "adahessian", "influence"}


@dataclass(frozen=True)
class Cell:
    objective: str
    optimizer: str  # an optimizer name, or "influence" for the one-shot baseline
    lr: float | None
    seed: int

    @property
    def id(self) -> str:
        """The cell's name: its exact settings, the lr as its shortest round-trip repr (1e-3
        and 1.4e-3 are ``lr0.001`` and ``lr0.0014``), so no two cells share a name."""
        lr = "oneshot" if self.lr is None else f"lr{self.lr!r}"
        return f"{self.objective}-{self.optimizer}-{lr}-s{self.seed}"


def grid(recipe: Recipe, seeds: tuple[int, ...] | None = None) -> list[Cell]:
    """Every cell of the grid, with ``seeds`` (default: ``compare.seeds``)."""
    c = recipe.compare
    seeds = c.seeds if seeds is None else seeds
    cells = [Cell(obj, opt, lr, seed) for obj in c.objectives for opt in c.optimizers
             for lr in lr_grid(recipe, opt) for seed in seeds]
    if c.include_influence:
        cells += [Cell("ga", "influence", None, seed) for seed in seeds]
    return cells


def lr_grid(recipe: Recipe, optimizer: str) -> tuple[float, ...]:
    """The learning rates an optimizer's cells run: ``compare.per_optimizer.<name>.lr_grid``,
    else ``compare.lr_grid``, else ``optimizer.lr``."""
    own = recipe.compare.per_optimizer.get(optimizer)
    return (own.lr_grid if own else ()) or recipe.compare.lr_grid or (recipe.optimizer.lr,)


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
    objective takes them (rho means nothing to AdamW); then the optimizer's own
    ``compare.per_optimizer`` ``unlearn`` keys and ``args`` replace the recipe's.
    """
    from soulcli.objectives import objective_hparams
    from soulcli.optim import optimizer_hparams

    if cell.optimizer == "influence":
        return replace(recipe, seed=cell.seed, unlearn={"method": "influence", "objective": "ga", "objective_args": {}})
    known = optimizer_hparams(cell.optimizer)
    args = {k: v for k, v in recipe.optimizer.args.items() if k in known}
    okeys = objective_hparams(cell.objective)
    oargs = {k: v for k, v in recipe.unlearn.objective_args.items() if k in okeys}
    own = recipe.compare.per_optimizer.get(cell.optimizer)
    return replace(recipe, seed=cell.seed,
                   optimizer={"name": cell.optimizer, "lr": cell.lr, "args": {**args, **(own.args if own else {})}},
                   unlearn={**(own.unlearn if own else {}), "objective": cell.objective,
                            "objective_args": oargs, "method": "iterative"})


#: Recipe keys that name or place things, or change no cell's numbers (the attack section; the
#: inputs' content is compared by fingerprint instead of data.source / model.source / model.reference).
_PLACES = {"name": None, "output_dir": None, "cache_dir": None, "compare": None, "attack": None,
           "data": ("source",), "model": ("source", "reference"), "unlearn": ("save_every",),
           "finetune": ("save_every",)}


def cell_settings(recipe: Recipe, cell: Cell, inputs: dict[str, str | None]) -> dict[str, Any]:
    """What a cell's numbers depend on, stored in its result: its resolved recipe
    (:func:`cell_recipe`, without :data:`_PLACES`) and the fingerprints of the data, target and
    reference (``inputs``). A finished cell is reused only when these match."""
    raw = recipe_to_dict(cell_recipe(recipe, cell))
    for key, sub in _PLACES.items():
        if sub is None:
            raw.pop(key, None)
        else:
            for k in sub:
                raw[key].pop(k, None)
    return json.loads(to_json({"recipe": raw, "inputs": inputs}))  # as it reads back from JSON


def changed_keys(old: Any, new: Any, at: str = "") -> list[str]:
    """The dotted keys where two settings mappings differ (a missing key counts)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new), key=str)
                for k in changed_keys(old.get(key), new.get(key), f"{at}.{key}" if at else str(key))]
    return [] if old == new else [at or "settings"]


def cell_run(recipe: Recipe, cell: Cell, data_dir: Path, target_dir: Path, device: torch.device) -> PreparedRun:
    """The target model (with the recipe's adapter) ready to unlearn with the cell's settings,
    every generator seeded by the cell's seed."""
    from soulcli.models.loading import apply_adapter, load_model

    r = cell_recipe(recipe, cell)
    common.setup_runtime(r)
    model, tokenizer = load_model(str(target_dir), r.model.dtype, device, r.model.trust_remote_code)
    model = apply_adapter(model, r.model.adapter, r.model.lora, r.model.trainable)
    return PreparedRun(r, model, tokenizer, data_dir, target_dir, device)


def run_cell(recipe: Recipe, cell: Cell, data_dir: Path, target_dir: Path, reference: dict | None,
             reporter: Reporter, device: torch.device, n_forget: int) -> dict[str, Any]:
    """Unlearn from the target model with the cell's settings, evaluating along the way."""
    run = cell_run(recipe, cell, data_dir, target_dir, device)
    eval_every = tracking.step_plan(run.recipe, n_forget)[1]  # compare.per_optimizer can change it
    tracker = tracking.HeadlineTracker(run.recipe, run.model, run.tokenizer, data_dir, reference, eval_every)
    with PeakMemory(device) as mem:  # the one-shot influence step is evaluated once, after it
        record = unlearn_model(run, reporter, on_step_end=tracker)
    tracker.finish(record["steps"])
    rows = record["rows"]
    step_times = [row["step_seconds"] for row in rows if "step_seconds" in row]
    win = [row["win_rate"] for row in rows if "win_rate" in row]
    return {
        **asdict(cell), "id": cell.id, "steps": record["steps"],
        "seconds": record["seconds"],
        "time_per_step": statistics.mean(step_times) if step_times else record["seconds"],
        "peak_memory_mb": round(mem.peak_mb, 1),
        "mean_win_rate": statistics.mean(win) if win else None,
        "evaluations": tracker.curve,
    }


def select(cells: list[dict], target_utility: float, ratio: float, headline: Headline) -> list[dict[str, Any]]:
    """Per optimizer x objective: the (lr, step) that the rule (:func:`tracking.rank`) ranks
    best by its mean forget and utility metrics, the floor ratio x the target's utility; seeds
    give the spread."""
    groups: dict[tuple[str, str], dict[tuple[Any, int], list[dict]]] = {}
    for c in cells:
        for ev in c["evaluations"]:
            groups.setdefault((c["objective"], c["optimizer"]), {}).setdefault((c["lr"], ev["step"]), []).append(
                {**ev, "seed": c["seed"], "mean_win_rate": c["mean_win_rate"], "time_per_step": c["time_per_step"],
                 "peak_memory_mb": c["peak_memory_mb"]})
    out = []
    bound = headline.utility_bound(target_utility, ratio)
    for (objective, optimizer), settings in groups.items():
        best = None
        for (lr, step), evs in settings.items():
            fq = [e[headline.forget] for e in evs if e.get(headline.forget) is not None]
            mu = [e[headline.utility] for e in evs if e.get(headline.utility) is not None]
            if not fq or not mu:
                continue
            means = {headline.forget: statistics.mean(fq), headline.utility: statistics.mean(mu)}
            key = tracking.rank(means, headline, bound)
            if key is not None and (best is None or key > best[0]):
                best = (key, {"lr": lr, "step": step, "evs": evs})
        if best is None:
            continue
        cand = best[1]
        evs = cand["evs"]

        def spread(name: str) -> dict[str, float | None]:
            return _spread([e.get(name) for e in evs])

        out.append({
            "objective": objective, "optimizer": optimizer, "lr": cand["lr"], "step": cand["step"],
            "meets_utility_rule": best[0][0], "seeds": [e["seed"] for e in evs],
            **{name: spread(name) for name in headline.tracked},
            "mean_win_rate": spread("mean_win_rate")["mean"],
            "time_per_step": spread("time_per_step")["mean"],
            "peak_memory_mb": spread("peak_memory_mb")["mean"],
        })
    return out


def _spread(values: list[float | None]) -> dict[str, float | None]:
    """Mean, population std, min and max of the values that are not None (all None: all None)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": statistics.mean(vals), "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
            "min": min(vals), "max": max(vals)}


def attacked_id(cell_id: str, step: int) -> str:
    """The folder of a cell's model at ``step`` under ``attacks/``."""
    return f"{cell_id}-step{step}"


def attack_selected(recipe: Recipe, selected: list[dict], results: list[dict], data_dir: Path, target_dir: Path,
                    inputs: dict[str, str | None], out_dir: Path, reporter: Reporter,
                    device: torch.device) -> dict[str, Values]:
    """``compare.attacks``: attack the model of each selected optimizer x objective at its
    selected step, for each seed, with `soul attack`'s code (:func:`soulcli.workflows.attack.run_attack`,
    the attack section's settings, ``attack.attacks`` = ``compare.attacks``).

    Cells save no model (which step is selected is known only once every cell has run), so each
    is re-created: the cell's unlearning again, same seed and batch plan, stopped at the step
    (``stop_after``). That costs at most one cell's training per seed and optimizer x objective,
    where saving every evaluated step of every cell would write a model per cell evaluation; the
    training is deterministic, and a re-created model whose headline metrics differ from the
    cell's evaluation at that step is named in a warning. Each lands in
    ``attacks/<cell id>-step<N>/`` (``model/``, ``attack.json``, ``attack.png``,
    ``settings.json``: the cell's settings, the step and the attack section) and is reused while
    ``settings.json`` matches. Adds ``attacks`` (each attack value's spread over seeds) and
    ``attacked`` (the folders) to each selected entry; returns each folder's attack values
    (``LABEL.METRIC``, ``LABEL.recovered.METRIC``: `soul attack`'s gate names; not ``relearn0``,
    the unlearned model itself)."""
    import shutil

    from soulcli.models.loading import export_model
    from soulcli.workflows.attack import run_attack

    quiet = Reporter(reporter.console, quiet=True)
    by_id = {c["id"]: c for c in results}
    values: dict[str, Values] = {}
    for s in selected:
        names: list[str] = []
        for seed in s["seeds"]:
            cell = Cell(s["objective"], s["optimizer"], s["lr"], seed)
            folder = out_dir / "attacks" / attacked_id(cell.id, s["step"])
            r = replace(cell_recipe(recipe, cell), attack={"attacks": list(recipe.compare.attacks)})
            settings = json.loads(to_json({"cell": cell_settings(recipe, cell, inputs), "step": s["step"],
                                           "attack": recipe_to_dict(r)["attack"]}))
            stored = folder / "settings.json"
            if not (stored.is_file() and json.loads(stored.read_text()) == settings):
                reporter.info(f"Attacking {folder.name} ({', '.join(recipe.compare.attacks)})")
                shutil.rmtree(folder, ignore_errors=True)
                run = cell_run(recipe, cell, data_dir, target_dir, device)
                unlearn_model(run, quiet, stop_after=s["step"])
                export_model(run.model, run.tokenizer, folder / "model")
                del run
                run_attack(r, quiet, None, str(folder / "model"), folder)
                write_json(stored, settings)  # last: a folder without it is attacked again
            report = json.loads((folder / "attack.json").read_text())
            evaluated = next((e for e in by_id[cell.id]["evaluations"] if e["step"] == s["step"]), {})
            if any(not _same(report["unlearned"].get(k), evaluated.get(k)) for k in report["metrics"]):
                reporter.info(f"[yellow]warning:[/] the re-created model {folder.name} does not reproduce the "
                              f"cell's evaluation at step {s['step']} (training not deterministic here?)")
            values[folder.name] = {k: v for k, v in report["gates"].items()  # relearn0: the model itself
                                   if not k.startswith(("unlearned.", "target.", "relearn0."))}
            names += [n for n in values[folder.name] if n not in names]
        ids = [attacked_id(Cell(s["objective"], s["optimizer"], s["lr"], seed).id, s["step"]) for seed in s["seeds"]]
        s["attacked"] = [str(out_dir / "attacks" / i) for i in ids]
        s["attacks"] = {n: _spread([values[i].get(n) for i in ids]) for n in names}
    return values


def _same(a: float | None, b: float | None) -> bool:
    """Equal up to float rounding (a LoRA cell is evaluated unmerged, its saved model merged)."""
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))


def results_csv(cells: list[dict], headline: Headline, attacked: dict[str, Values] | None = None) -> str:
    """One row per cell evaluation; with attacks, the row of an attacked (cell, step) also holds
    its attack values (one column per `soul attack` gate name)."""
    attacked = attacked or {}
    names = list(dict.fromkeys(n for v in attacked.values() for n in v))
    buf = io.StringIO()
    fields = ["objective", "optimizer", "lr", "seed", "step", *headline.tracked, "time_per_step",
              "peak_memory_mb", "mean_win_rate", *names]
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for c in cells:
        for ev in c["evaluations"]:
            extra = attacked.get(attacked_id(c["id"], ev["step"]), {})
            w.writerow({**{k: c[k] for k in ("objective", "optimizer", "lr", "seed", "time_per_step",
                                             "peak_memory_mb", "mean_win_rate")}, **ev, **extra})
    return buf.getvalue()


def _label(headline: Headline, name: str) -> str:
    return dict(headline.columns).get(name, name)


def _on_scale(v: float | None, headline: Headline) -> float | None:
    """A forget value as plotted: on a log scale, 0 (or None) at 1e-30 so it stays on the plot."""
    return max(v or 1e-30, 1e-30) if headline.forget_log_scale else v


def _palette(selected: list[dict], plt) -> tuple[list[str], list[str], dict[str, str], dict[str, Any]]:
    """Objectives, optimizers (first-order first), a marker per objective, a colour per optimizer:
    the looks every plot of a comparison shares."""
    objectives = sorted({s["objective"] for s in selected})
    optimizers = sorted({s["optimizer"] for s in selected}, key=lambda o: (o in SECOND_ORDER, o))
    markers = {o: m for o, m in zip(objectives, "osD^v<>p*")}
    colors = {o: plt.get_cmap("tab10")(i % 10) for i, o in enumerate(optimizers)}
    return objectives, optimizers, markers, colors


def plot(cells: list[dict], selected: list[dict], target: dict, out_dir: Path, headline: Headline) -> list[str]:
    """The SOUL teaser (forget metric vs utility metric; TOFU: forget quality vs model utility)
    and the curves over steps."""
    fk, uk = headline.forget, headline.utility

    def fval(v):
        return _on_scale(v, headline)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    objectives, optimizers, markers, colors = _palette(selected, plt)
    for s in selected:
        so = s["optimizer"] in SECOND_ORDER
        ax.scatter(s[uk]["mean"], fval(s[fk]["mean"]),
                   marker=markers[s["objective"]], s=80, color=colors[s["optimizer"]],
                   edgecolor="black", linewidth=1.6 if so else 0.6, zorder=3)
    ax.axvline(target[uk], color="grey", ls="--", lw=1)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=colors[o], markeredgecolor="black",
                      label=f"{o} ({'SO' if o in SECOND_ORDER else 'FO'})") for o in optimizers]
    handles += [Line2D([], [], ls="", marker=markers[o], color="white", markeredgecolor="black", label=o)
                for o in objectives]
    handles.append(Line2D([], [], color="grey", ls="--", label=f"target {uk}"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    if headline.forget_log_scale:
        ax.set_yscale("log")
    better = ("nearer " + f"{headline.forget_goal:g}" if headline.forget_goal is not None
              else "higher" if headline.forget_higher else "lower")
    ax.set_xlabel(f"{uk} (mean over seeds; {'higher' if headline.utility_higher else 'lower'} is better)")
    ax.set_ylabel(f"{fk} ({better} is better{', log scale' if headline.forget_log_scale else ''})")
    ax.set_title(f"{fk} vs {uk}, selected setting per optimizer x objective", fontsize=9)
    fig.tight_layout()
    name = headline.plot_file
    fig.savefig(out_dir / name, dpi=130)
    plt.close(fig)
    files.append(name)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    # colour = optimizer (as in the teaser), line style and marker = objective
    styles = {o: ls for o, ls in zip(objectives, ["-", "--", ":", "-."] * 3)}
    for s in selected:
        runs = [c for c in cells if c["objective"] == s["objective"] and c["optimizer"] == s["optimizer"]
                and c["lr"] == s["lr"] and c["seed"] == s["seeds"][0]]
        if not runs:
            continue
        evs = [{"step": 0, **{k: target[k] for k in headline.tracked}}] + runs[0]["evaluations"]
        steps = [e["step"] for e in evs]
        kind = "SO" if s["optimizer"] in SECOND_ORDER else "FO"
        label = f"{s['optimizer']} ({kind}) / {s['objective']}"
        look = dict(color=colors[s["optimizer"]], ls=styles[s["objective"]], marker=markers[s["objective"]],
                    markersize=4, label=label)
        axes[0].plot(steps, [fval(e[fk]) for e in evs], **look)
        axes[1].plot(steps, [e[uk] for e in evs], **look)
    if headline.forget_log_scale:
        axes[0].set_yscale("log")
    axes[0].set_title(f"{fk} over steps (selected lr, first seed)")
    axes[1].set_title(f"{uk} over steps")
    for ax in axes:
        ax.set_xlabel("step")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=130)
    plt.close(fig)
    files.append("curves.png")
    return files


def render_table(selected: list[dict], target: dict, rule: str, console, headline: Headline) -> None:
    from rich.table import Table

    def fmt(v: Any, digits: int = 3) -> str:
        if v is None:
            return "-"
        return f"{v:.2e}" if isinstance(v, float) and 0 < abs(v) < 1e-2 else f"{v:.{digits}f}"

    fk = headline.forget
    others = [n for n, _ in headline.columns if n != fk]
    attacked = attack_columns(selected, headline)
    table = Table(title=f"compare-optimizers ({rule})")
    for col in ("objective", "type", "optimizer", "lr", "step", f"{_label(headline, fk)} mean [min, max]",
                *(_label(headline, n) for n in others), "win rate", "s/step",
                *(f"{label} {_label(headline, n)}" for label, n in attacked)):
        table.add_column(col)
    table.add_row("target", "-", "-", "-", "0", fmt(target[fk]), *(fmt(target[n]) for n in others), "-", "-",
                  *("-" for _ in attacked))
    for s in sorted(selected, key=lambda s: (s["objective"], s["optimizer"] in SECOND_ORDER, s["optimizer"])):
        fq = s[fk]
        table.add_row(
            s["objective"], "SO" if s["optimizer"] in SECOND_ORDER else "FO", s["optimizer"],
            "-" if s["lr"] is None else f"{s['lr']:g}", str(s["step"]),
            f"{fmt(fq['mean'])} [{fmt(fq['min'])}, {fmt(fq['max'])}]" + ("" if s["meets_utility_rule"] else " *"),
            *(fmt(s[n]["mean"]) for n in others), fmt(s["mean_win_rate"]), fmt(s["time_per_step"]),
            *(fmt(s.get("attacks", {}).get(f"{label}.{n}", {}).get("mean")) for label, n in attacked))
    if attacked:
        table.caption = "after an attack: mean over seeds of the re-created selected model, attacked (attacks/)"
    console.print(table)


def attack_labels(selected: list[dict]) -> list[str]:
    """The attack points the selected entries were attacked at, in order."""
    return list(dict.fromkeys(name.split(".")[0] for s in selected for name in s.get("attacks", {})))


def attack_columns(selected: list[dict], headline: Headline) -> list[tuple[str, str]]:
    """(attack point, metric) for the table: each point with ``headline.attacked`` (default: the
    forget metric)."""
    return [(label, n) for label in attack_labels(selected) for n in headline.attacked or (headline.forget,)]


def plot_robustness(selected: list[dict], out_dir: Path, headline: Headline) -> str:
    """robustness.png: per attack point, the forget metric after the attack against before it,
    one marker per optimizer x objective (mean over seeds), with the diagonal (the attack
    changed nothing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fk, labels = headline.forget, attack_labels(selected)
    fig, axes = plt.subplots(1, len(labels), figsize=(4.4 * len(labels) + 2.2, 4.2), squeeze=False)
    _, _, markers, colors = _palette(selected, plt)
    for ax, label in zip(axes[0], labels):
        points = [(s, _on_scale(s[fk]["mean"], headline),
                   _on_scale(s.get("attacks", {}).get(f"{label}.{fk}", {}).get("mean"), headline)) for s in selected]
        points = [(s, x, y) for s, x, y in points if x is not None and y is not None]
        for s, x, y in points:
            ax.scatter(x, y, s=70, zorder=3, marker=markers[s["objective"]], color=colors[s["optimizer"]],
                       edgecolor="black", label=f"{s['optimizer']} / {s['objective']}")
        if points:
            lo, hi = min(min(x, y) for _, x, y in points), max(max(x, y) for _, x, y in points)
            ax.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=1, zorder=1)
        if headline.forget_log_scale:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(f"{fk} before the attack")
        ax.set_ylabel(f"{fk} after {label}")
        ax.set_title(label)
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    better = "higher" if headline.forget_higher else "lower"
    fig.suptitle(f"{fk} after vs before each attack ({better} is better; on the diagonal: the attack "
                 "changed nothing), selected setting per optimizer x objective", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "robustness.png", dpi=130)
    plt.close(fig)
    return "robustness.png"


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
    from soulcli.models.loading import load_model

    device = common.setup_runtime(recipe)
    cells_dir = out_dir / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    data_dir, target_dir = artifacts.target_model_path(recipe, reporter)
    ref_dir = artifacts.reference_model_path(recipe, reporter, data_dir)
    reference = reference_stats(recipe, ref_dir, data_dir, reporter, device) if ref_dir else None

    sources = provenance.record(recipe, data_dir, target_dir, ref_dir)
    write_json(out_dir / provenance.FILE, sources)
    inputs = {role: e and (e["fingerprint"] or e["path"]) for role, e in sources.items()}

    task = common.task_of(recipe)
    headline = task.headline
    target_file = cells_dir / "target.json"
    target_key = json.loads(to_json({"inputs": inputs, "eval": recipe_to_dict(recipe)["eval"],
                                     "task": task.settings()}))
    stored = json.loads(target_file.read_text()) if target_file.is_file() else {}
    if stored.get("settings") == target_key:
        target = stored["values"]
    else:
        model, tokenizer = load_model(str(target_dir), recipe.model.dtype, device,
                                      recipe.model.trust_remote_code)
        start = tracking.HeadlineTracker(recipe, model, tokenizer, data_dir, reference, None).evaluate(0)
        target = {k: v for k, v in start.items() if k != "step"}
        write_json(target_file, {"settings": target_key, "values": target})

    n_forget = len(task.unlearn_sets(data_dir)[0].rows)
    c = recipe.compare
    by_plan: dict[tuple[int, int], list[str]] = {}
    for opt in c.optimizers:
        first = cell_recipe(recipe, Cell(c.objectives[0], opt, lr_grid(recipe, opt)[0], recipe.seed))
        by_plan.setdefault(tracking.step_plan(first, n_forget), []).append(opt)
    staged = c.seed_policy == "selected" and len(c.seeds) > 1
    cells = grid(recipe, c.seeds[:1] if staged else c.seeds)
    groups = len({(cell.objective, cell.optimizer) for cell in cells})
    total = len(cells) + (groups * (len(c.seeds) - 1) if staged else 0)
    plan_text = "; ".join(f"{steps} steps each, evaluated every {every} steps"
                          + (f" ({', '.join(opts)})" if len(by_plan) > 1 else "")
                          for (steps, every), opts in sorted(by_plan.items()))
    reporter.info(f"Comparing {total} cells ({plan_text}) in {out_dir}")
    results: list[dict] = []
    with reporter.task("grid", total) as task:

        def run_all(todo: list[Cell]) -> None:
            for cell in todo:
                path = cells_dir / f"{cell.id}.json"
                settings = cell_settings(recipe, cell, inputs)
                if path.is_file():
                    done = json.loads(path.read_text())
                    changed = changed_keys(done.get("settings"), settings)
                    if not changed:
                        results.append(done)
                        task.update(1, cell=f"{cell.id} (done before)")
                        continue
                    reporter.info(f"cell {cell.id}: its settings changed since it ran ({', '.join(changed[:4])}"
                                  f"{', ...' if len(changed) > 4 else ''}); running it again")
                reporter.info(f"cell {cell.id}")
                try:
                    res = run_cell(recipe, cell, data_dir, target_dir, reference, reporter, device, n_forget)
                except DivergedError as exc:
                    reporter.info(f"[yellow]warning:[/] cell {cell.id} diverged ({exc}); recorded, never selected")
                    res = {**asdict(cell), "id": cell.id, "diverged": str(exc), "evaluations": []}
                res["settings"] = settings
                write_json(path, res)
                results.append(res)
                task.update(1, cell=cell.id)

        run_all(cells)
        if staged:
            tuned = select(results, target[headline.utility], c.utility_ratio, headline)
            run_all(follow_up_cells(tuned, c.seeds[1:]))

    seeds_text = (f"lr chosen on seed {c.seeds[0]}, step by the mean over seeds {list(c.seeds)} at that lr"
                  if staged else f"mean over seeds {list(c.seeds)}")
    rule = (f"selected per optimizer x objective: {headline.forget_better} {headline.forget} with "
            f"{headline.utility_rule(target[headline.utility], c.utility_ratio)}; {seeds_text}; "
            f"* = no setting met the rule, best utility shown")
    pool = at_selected_lr(results, tuned) if staged else results
    selected = select(pool, target[headline.utility], c.utility_ratio, headline)
    attacked = (attack_selected(recipe, selected, results, data_dir, target_dir, inputs, out_dir, reporter, device)
                if c.attacks else {})
    diverged = [c["id"] for c in results if c.get("diverged")]
    summary = {"rule": rule, "task": recipe.task, "headline": asdict(headline), "target": target, "target_model": str(target_dir), "data": str(data_dir),
               "selected": selected, "diverged": diverged, "cells": results, "recipe": recipe_to_dict(recipe), "versions": versions()}
    write_json(out_dir / "results.json", summary)
    atomic_write(out_dir / "results.csv", results_csv(results, headline, attacked))
    plots = plot(results, selected, target, out_dir, headline)
    if attack_labels(selected):
        plots.append(plot_robustness(selected, out_dir, headline))
    if not reporter.quiet:
        render_table(selected, target, rule, reporter.console, headline)
        reporter.info(f"Results in {out_dir}: results.json, results.csv, {', '.join(plots)}")
    return {"path": str(out_dir), "rule": rule, "target": target, "selected": selected, "diverged": diverged}
