"""compare-optimizers: outputs, the fair selection rule, and resuming without recomputation."""

from __future__ import annotations

import csv
import json

import pytest

from soulcli.tasks import Headline, TofuTask
from soulcli.workflows.compare import select

TOFU = TofuTask.headline


def _cell(opt, lr, seed, evals, win=None):
    return {"objective": "graddiff", "optimizer": opt, "lr": lr, "seed": seed, "mean_win_rate": win,
            "time_per_step": 0.1, "peak_memory_mb": 1.0,
            "evaluations": [{"step": s, "forget_quality": fq, "model_utility": mu, "forget_rougeL_recall": 0.5,
                             "retain_rougeL_recall": 0.9, "forget_truth_ratio": 0.6} for s, fq, mu in evals]}


def test_selection_takes_best_forget_quality_among_settings_that_keep_utility():
    cells = [
        _cell("adamw", 1e-4, 0, [(5, 0.01, 0.85), (10, 0.9, 0.70)]),  # step 10 breaks the utility rule
        _cell("adamw", 1e-4, 1, [(5, 0.03, 0.83), (10, 0.8, 0.70)]),
        _cell("adamw", 3e-4, 0, [(5, 0.2, 0.80), (10, 0.95, 0.5)]),
        _cell("adamw", 3e-4, 1, [(5, 0.4, 0.78), (10, 0.99, 0.5)]),
    ]
    (sel,) = select(cells, target_utility=0.88, ratio=0.9, headline=TOFU)  # floor 0.792
    # lr 3e-4 step 5 has mean MU 0.79 < 0.792: not eligible; lr 1e-4 step 5 is
    assert (sel["lr"], sel["step"], sel["meets_utility_rule"]) == (1e-4, 5, True)
    assert sel["forget_quality"]["mean"] == pytest.approx(0.02)
    assert sel["forget_quality"]["min"] == 0.01 and sel["forget_quality"]["max"] == 0.03
    assert sel["forget_quality"]["std"] == pytest.approx(0.01)
    assert sel["seeds"] == [0, 1]
    (loose,) = select(cells, target_utility=0.88, ratio=0.5, headline=TOFU)  # floor 0.44: everything eligible
    assert (loose["lr"], loose["step"]) == (3e-4, 10)


def test_a_lower_is_better_forget_metric_selects_the_lowest():
    """MUSE-like headline: forget VerbMem, lower is better, utility retain KnowMem."""
    headline = Headline(forget="forget_quality", forget_higher=False, utility="model_utility",
                        columns=(("forget_quality", "F"),))
    cells = [_cell("adamw", 1e-4, 0, [(5, 0.6, 0.85), (10, 0.2, 0.84), (15, 0.05, 0.5)])]
    (sel,) = select(cells, target_utility=0.88, ratio=0.9, headline=headline)  # floor 0.792
    assert (sel["step"], sel["forget_quality"]["mean"]) == (10, 0.2)  # 0.05 breaks utility


def test_selection_flags_when_no_setting_keeps_utility():
    (sel,) = select([_cell("signum", 1e-3, 0, [(5, 0.5, 0.1), (10, 0.9, 0.05)])], 0.9, 0.9, TOFU)
    assert sel["meets_utility_rule"] is False and sel["step"] == 5  # best utility among the failing


def test_compare_outputs_and_resume(soul, pipeline, tmp_path):
    out = tmp_path / "cmp"
    args = ["compare-optimizers", "--optimizers", "adamw,sophiag", "--objectives", "graddiff", "--lr-grid",
            "1e-3", "--set", "unlearn.eval_every=1", "--output", str(out)]
    first = soul.json(*args)
    for name in ("results.json", "results.csv", "fq_vs_mu.png", "curves.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    ids = sorted(c["id"] for c in results["cells"])
    assert ids == ["ga-influence-oneshot-s0", "graddiff-adamw-lr0.001-s0", "graddiff-sophiag-lr0.001-s0"]
    sophia = next(c for c in results["cells"] if c["optimizer"] == "sophiag")
    assert [e["step"] for e in sophia["evaluations"]] == [1, 2]
    assert 0 <= sophia["mean_win_rate"] <= 1 and sophia["time_per_step"] > 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 2 + 2 + 1
    assert "highest forget_quality with model_utility >= 0.9" in first["rule"]
    assert {s["optimizer"] for s in first["selected"]} == {"adamw", "sophiag", "influence"}

    # resume: finished cells are read back, not recomputed
    cell_file = out / "cells" / "graddiff-adamw-lr0.001-s0.json"
    cell = json.loads(cell_file.read_text())
    cell["evaluations"][0]["forget_quality"] = 0.123456
    cell_file.write_text(json.dumps(cell))
    soul.json(*args)
    again = json.loads((out / "results.json").read_text())
    adamw = next(c for c in again["cells"] if c["optimizer"] == "adamw")
    assert adamw["evaluations"][0]["forget_quality"] == 0.123456


def test_selected_seed_policy_runs_other_seeds_only_at_the_chosen_lr(soul, pipeline, tmp_path):
    out = tmp_path / "staged"
    res = soul.json("compare-optimizers", "--optimizers", "adamw", "--objectives", "graddiff",
                    "--lr-grid", "1e-3,1e-2", "--seeds", "0,1", "--seed-policy", "selected",
                    "--set", "unlearn.eval_every=1", "--output", str(out))
    cells = json.loads((out / "results.json").read_text())["cells"]
    (chosen,) = [s for s in res["selected"] if s["optimizer"] == "adamw"]
    other = 1e-2 if chosen["lr"] == 1e-3 else 1e-3
    runs = sorted((c["optimizer"], c["lr"], c["seed"]) for c in cells)
    assert runs == sorted([("adamw", 1e-3, 0), ("adamw", 1e-2, 0), ("adamw", chosen["lr"], 1),
                           ("influence", None, 0), ("influence", None, 1)])
    assert ("adamw", other, 1) not in runs
    assert chosen["seeds"] == [0, 1]
    assert "lr chosen on seed 0" in res["rule"]


def test_follow_up_cells_and_selected_lr_filter():
    from soulcli.workflows.compare import at_selected_lr, follow_up_cells

    sel = [{"objective": "graddiff", "optimizer": "adamw", "lr": 3e-4}]
    assert [c.id for c in follow_up_cells(sel, (1, 2))] == ["graddiff-adamw-lr0.0003-s1",
                                                             "graddiff-adamw-lr0.0003-s2"]
    cells = [_cell("adamw", 1e-4, 0, [(5, 0.1, 0.9)]), _cell("adamw", 3e-4, 0, [(5, 0.2, 0.9)]),
             _cell("signum", 3e-4, 0, [(5, 0.2, 0.9)])]
    assert [(c["optimizer"], c["lr"]) for c in at_selected_lr(cells, sel)] == [("adamw", 3e-4)]


def test_cells_carry_only_the_objective_args_their_objective_takes():
    """An RMU recipe's layer / steering_coeff reach RMU cells, not GradDiff's nor the one-shot
    influence baseline's (whose GA once inherited them and failed validation mid-grid)."""
    from pathlib import Path

    from soulcli.recipe import load_recipe
    from soulcli.workflows.compare import Cell, cell_recipe

    recipe = load_recipe(Path(__file__).parents[1] / "assets" / "micro_wmdp.yaml")
    args = {obj: cell_recipe(recipe, Cell(obj, opt, lr, 0)).unlearn.objective_args
            for obj, opt, lr in (("rmu", "adamw", 1e-3), ("graddiff", "adamw", 1e-3), ("ga", "influence", None))}
    assert args == {"rmu": {"layer": 1, "steering_coeff": 6.5}, "graddiff": {}, "ga": {}}  # each one validated


def test_cell_names_spell_the_exact_lr():
    from soulcli.workflows.compare import Cell

    ids = [Cell("graddiff", "adamw", lr, 0).id for lr in (1e-3, 1.4e-3, 1e-5, 0.1 + 0.2)]
    assert ids == ["graddiff-adamw-lr0.001-s0", "graddiff-adamw-lr0.0014-s0", "graddiff-adamw-lr1e-05-s0",
                   "graddiff-adamw-lr0.30000000000000004-s0"]


def test_changed_keys_names_every_difference():
    from soulcli.workflows.compare import changed_keys

    old = {"recipe": {"unlearn": {"epochs": 2, "batch_size": 4}, "seed": 0}, "inputs": {"data": "a"}}
    new = {"recipe": {"unlearn": {"epochs": 3, "batch_size": 4}, "seed": 0}, "inputs": {"data": "b"}}
    assert changed_keys(old, new) == ["inputs.data", "recipe.unlearn.epochs"]
    assert changed_keys(old, old) == []
    assert changed_keys(None, new) == ["settings"]  # a cell stored without its settings


def test_lrs_that_round_alike_are_two_cells_and_changed_settings_rerun(soul, pipeline, tmp_path):
    out = tmp_path / "cmp"

    def compare(epochs: int):
        res = soul("compare-optimizers", "--optimizers", "adamw", "--objectives", "graddiff", "--lr-grid",
                   "1e-3,1.4e-3", "--set", "compare.include_influence=false", "--set", f"unlearn.epochs={epochs}",
                   "--output", str(out))
        assert res.exit_code == 0, res.output
        return res.output, json.loads((out / "results.json").read_text())["cells"]

    _, cells = compare(1)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted({float(r["lr"]) for r in rows}) == [1e-3, 1.4e-3]
    assert sorted(c["id"] for c in cells) == ["graddiff-adamw-lr0.001-s0", "graddiff-adamw-lr0.0014-s0"]
    assert sorted(c["settings"]["recipe"]["optimizer"]["lr"] for c in cells) == [1e-3, 1.4e-3]
    assert [c["steps"] for c in cells] == [2, 2]  # 8 forget items, batches of 4

    log, cells = compare(2)
    assert log.count("its settings changed since it ran (recipe.unlearn.epochs); running it again") == 2
    assert [c["steps"] for c in cells] == [4, 4]
    log, _ = compare(2)
    assert "running it again" not in log and log.count("(done before)") == 2  # both reused


def test_per_optimizer_settings_reach_only_that_optimizers_cells():
    """compare.per_optimizer: zo gets its own lr grid, step budget, clipping and eps; the other
    optimizers keep the recipe's."""
    from pathlib import Path

    from soulcli.recipe import load_recipe
    from soulcli.workflows.compare import Cell, cell_recipe, grid
    from soulcli.workflows.tracking import step_plan

    recipe = load_recipe(Path(__file__).parents[1] / "assets" / "micro.yaml", [
        "compare.optimizers=[adamw,zo]", "compare.lr_grid=[1e-3]", "compare.include_influence=false",
        "compare.per_optimizer.zo.lr_grid=[1e-2,3e-2]", "compare.per_optimizer.zo.unlearn.max_grad_norm=null",
        "compare.per_optimizer.zo.unlearn.epochs=3", "compare.per_optimizer.zo.unlearn.eval_every=5",
        "compare.per_optimizer.zo.args.eps=0.01"])
    assert [c.id for c in grid(recipe)] == ["graddiff-adamw-lr0.001-s0", "graddiff-zo-lr0.01-s0",
                                            "graddiff-zo-lr0.03-s0"]
    zo = cell_recipe(recipe, Cell("graddiff", "zo", 1e-2, 0))
    adamw = cell_recipe(recipe, Cell("graddiff", "adamw", 1e-3, 0))
    assert (zo.unlearn.max_grad_norm, zo.unlearn.epochs, zo.unlearn.eval_every, zo.optimizer.args) == (
        None, 3, 5, {"diagnostics_every": 1, "eps": 0.01})  # the recipe's diagnostics_every carries over
    assert (adamw.unlearn.max_grad_norm, adamw.unlearn.epochs, adamw.unlearn.eval_every) == (1.0, 1, None)
    assert zo.unlearn.objective == "graddiff" and zo.optimizer.lr == 1e-2
    # 16 forget items (20 authors x 4 questions, forget10) in batches of 4: 4 steps an epoch
    assert step_plan(zo, 16) == (12, 5) and step_plan(adamw, 16) == (4, 1)


@pytest.mark.parametrize("override, problem", [
    ("compare.per_optimizer.lion.lr_grid=[1e-3]", "compare.per_optimizer.lion: 'lion' is not in compare.optimizers"),
    ("compare.per_optimizer.zo.unlearn.epoch=3", "compare.per_optimizer.zo.unlearn.epoch: unknown key of unlearn (did you mean 'epochs'?)"),
    ("compare.per_optimizer.zo.unlearn.objective=npo", "compare.per_optimizer.zo.unlearn.objective: set by the comparison's cell"),
    ("compare.per_optimizer.zo.args.rho=10", "compare.per_optimizer.zo.args.rho: unknown key of optimizer 'zo'"),
    ("compare.per_optimizer.zo.lr_grid=[-1]", "compare.per_optimizer.zo.lr_grid[0]: must be > 0"),
    ("compare.per_optimizer.zo.unlearn.max_grad_norm=-1", "compare.per_optimizer.zo.unlearn.max_grad_norm: must be > 0"),
])
def test_bad_per_optimizer_settings_are_refused_before_any_cell(override, problem):
    from pathlib import Path

    from soulcli.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError) as err:
        load_recipe(Path(__file__).parents[1] / "assets" / "micro.yaml",
                    ["compare.optimizers=[adamw,zo]", override])
    assert problem in str(err.value), str(err.value)


def test_per_optimizer_step_budget_in_a_comparison(soul, pipeline, tmp_path):
    """zo's cells run their own step budget and evaluation interval, and say so."""
    out = tmp_path / "cmp"
    res = soul("compare-optimizers", "--optimizers", "adamw,zo", "--objectives", "graddiff", "--lr-grid", "1e-3",
               "--set", "compare.include_influence=false", "--set", "unlearn.eval_every=1",
               "--set", "compare.per_optimizer.zo.unlearn.epochs=2", "--set", "compare.per_optimizer.zo.unlearn.eval_every=2",
               "--set", "compare.per_optimizer.zo.unlearn.max_grad_norm=null", "--output", str(out))
    assert res.exit_code == 0, res.output
    assert "2 steps each, evaluated every 1 steps (adamw); 4 steps each, evaluated every 2 steps (zo)" in res.output
    cells = {c["optimizer"]: c for c in json.loads((out / "results.json").read_text())["cells"]}
    assert (cells["adamw"]["steps"], [e["step"] for e in cells["adamw"]["evaluations"]]) == (2, [1, 2])
    assert (cells["zo"]["steps"], [e["step"] for e in cells["zo"]["evaluations"]]) == (4, [2, 4])
    assert cells["zo"]["settings"]["recipe"]["unlearn"]["max_grad_norm"] is None
