"""compare-optimizers --attacks on the micro recipe: the selected models re-created exactly, attacked
with `soul attack`'s numbers, as columns of results.csv and the table, their means over seeds,
the robustness plot, reuse by settings, and a bad attack name refused before any training."""

from __future__ import annotations

import csv
import json

import pytest
from rich.console import Console

from soulcli.errors import USER_ERROR_EXIT
from soulcli.tasks import TofuTask
from soulcli.workflows.compare import render_table

ATTACK = ("--set", "attack.relearn.steps=[0,2]", "--set", "attack.relearn.fraction=0.25",
          "--set", "attack.quantize.bits=[4]")
GRID = ("--optimizers", "adamw", "--objectives", "graddiff", "--lr-grid", "1e-3", "--seeds", "0,1",
        "--set", "compare.include_influence=false", "--set", "unlearn.eval_every=1")


@pytest.fixture(scope="module")
def compared(soul, pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp-attack") / "cmp"
    res = soul("compare-optimizers", *GRID, "--attacks", "relearn,quantize", *ATTACK, "--output", str(out))
    assert res.exit_code == 0, res.output
    return {"out": out, "log": res.output, "results": json.loads((out / "results.json").read_text())}


def test_attack_values_are_columns_of_results_csv_at_the_selected_step(compared):
    out, results = compared["out"], compared["results"]
    (sel,) = results["selected"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    for name in ("relearn2.forget_rougeL_recall", "relearn2.recovered.forget_quality", "quantize4.forget_quality",
                 "quantize4.model_utility"):
        assert name in rows[0], name
    assert not any(name.startswith(("relearn0.", "unlearned.", "target.")) for name in rows[0])
    attacked = [r for r in rows if int(r["step"]) == sel["step"]]
    assert sorted(int(r["seed"]) for r in attacked) == [0, 1]
    assert all(r["quantize4.forget_quality"] == "" for r in rows if int(r["step"]) != sel["step"])
    for r in attacked:
        report = json.loads((out / "attacks" / f"graddiff-adamw-lr0.001-s{r['seed']}-step{sel['step']}"
                             / "attack.json").read_text())
        for name in ("relearn2.forget_rougeL_recall", "quantize4.forget_quality", "relearn2.forget_truth_ratio"):
            assert float(r[name]) == report["gates"][name]
        # the re-created model is the cell's at that step: its headline values are the cell's evaluation
        assert report["unlearned"] == {k: float(r[k]) for k in report["metrics"]}
    for name in ("relearn2.forget_rougeL_recall", "quantize4.forget_quality"):
        per_seed = [float(r[name]) for r in attacked]
        assert sel["attacks"][name]["mean"] == pytest.approx(sum(per_seed) / 2, abs=1e-15)
        assert (sel["attacks"][name]["min"], sel["attacks"][name]["max"]) == (min(per_seed), max(per_seed))
    assert (out / "robustness.png").stat().st_size > 1000
    console = Console(width=400, record=True)
    render_table(compared["results"]["selected"], results["target"], "rule", console, TofuTask.headline)
    header = console.export_text().splitlines()[2]
    assert header.split("┃")[-5:-1] == [f" {c} " for c in ("relearn2 FQ", "relearn2 forget R-L", "quantize4 FQ",
                                                           "quantize4 forget R-L")]


def test_values_equal_soul_attack_on_the_recreated_model(soul, compared, tmp_path):
    out, (sel,) = compared["out"], compared["results"]["selected"]
    model = out / "attacks" / f"graddiff-adamw-lr0.001-s0-step{sel['step']}" / "model"
    mine = soul.json("attack", "--model", str(model), "--attacks", "relearn,quantize", *ATTACK, "-o", str(tmp_path))
    stored = json.loads((model.parent / "attack.json").read_text())
    assert mine["gates"] == stored["gates"]
    assert mine["relearn"]["points"] == stored["relearn"]["points"]


def test_attacked_cells_are_reused_only_while_their_settings_match(soul, compared):
    out = compared["out"]
    again = soul("compare-optimizers", *GRID, "--attacks", "relearn,quantize", *ATTACK, "--output", str(out))
    assert again.exit_code == 0 and "Attacking" not in again.output
    cell = out / "cells" / "graddiff-adamw-lr0.001-s0.json"
    before = cell.read_text()
    changed = soul("compare-optimizers", *GRID, "--attacks", "relearn,quantize", *ATTACK,
                   "--set", "attack.relearn.fraction=0.5", "--output", str(out))
    assert changed.exit_code == 0
    assert changed.output.count("Attacking graddiff-adamw-lr0.001-s") == 2  # both seeds again
    assert "running it again" not in changed.output and cell.read_text() == before  # cells: no attack settings
    step = compared["results"]["selected"][0]["step"]
    report = json.loads((out / "attacks" / f"graddiff-adamw-lr0.001-s0-step{step}" / "attack.json").read_text())
    assert report["relearn"]["fraction"] == 0.5 and report["relearn"]["items"] == 4


def test_a_bad_attack_name_is_one_line_before_any_training(soul, pipeline, tmp_path):
    res = soul("compare-optimizers", "--attacks", "relearn,smash", "--output", str(tmp_path / "cmp"))
    assert res.exit_code == USER_ERROR_EXIT
    assert "compare.attacks[1]: 'smash' is not one of 'relearn', 'quantize', 'probe'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "cmp").exists()
