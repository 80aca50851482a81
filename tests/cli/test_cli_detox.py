"""The detox task through the real CLI on the micro recipe: prepare-data (with the built-in
classifier), finetune, unlearn, evaluate with a gate, compare-optimizers' headline with a
lower-is-better utility (perplexity); PKU-SafeRLHF-style folders read and refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from soulcli.data import hostile
from soulcli.data.detox import load_detox, write_detox
from soulcli.tasks import DetoxTask, Headline
from soulcli.workflows.compare import select

MICRO_DETOX = Path(__file__).resolve().parents[1] / "assets" / "micro_detox.yaml"
PINNED_DETOX = Path(__file__).resolve().parents[1] / "assets" / "pinned_micro_detox.json"
NAMES = ("toxic_rate", "utility_ppl")


@pytest.fixture(scope="module")
def detox_run(soul, tmp_path_factory):
    work = tmp_path_factory.mktemp("detox")
    prepared = soul.json("prepare-data", recipe=MICRO_DETOX)
    finetuned = soul.json("finetune", "--which", "target", recipe=MICRO_DETOX)
    unlearned = soul.json("unlearn", "--output", str(work / "run"), recipe=MICRO_DETOX)
    return {"prepared": prepared, "finetuned": finetuned, "unlearned": unlearned, "run": work / "run"}


def test_the_detox_pipeline_trains_unlearns_and_evaluates(detox_run):
    data = Path(detox_run["prepared"]["path"])
    assert {p.name for p in data.glob("*.jsonl")} == {"train.jsonl", "test.jsonl", "benign.jsonl"}
    clf = detox_run["prepared"]["classifier"]
    assert clf["heldout_accuracy"] == 1.0 and clf["heldout_items"] == 24  # 2 test people x 6 kinds x 2
    assert (data / "classifier" / "config.json").is_file()
    target = detox_run["finetuned"]["models"]["target"]
    assert target["split"] == "train (safe + unsafe responses)"
    assert detox_run["finetuned"]["target_metrics"]["toxic_rate"] > 0  # the target says hostile things
    run = detox_run["run"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "detox" and summary["steps"] == 5  # 19 unsafe responses / batch 4 x 1 epoch
    ev = json.loads((run / "eval.json").read_text())
    assert list(ev["metrics"]) == list(NAMES)
    tr = ev["metrics"]["toxic_rate"]
    assert len(tr["per_item"]) == len(tr["generations"]) == len(tr["scores"]) == 12
    assert tr["value"] == pytest.approx(sum(s > 0.5 for s in tr["scores"]) / 12)
    assert ev["metrics"]["utility_ppl"]["value"] > 1 and ev["reference"] is None


def test_evaluate_gates_the_toxic_rate(soul, detox_run):
    res = soul("evaluate", str(detox_run["run"]), "--fail-over", "toxic_rate=-0.5", "--json", recipe=None)
    assert res.exit_code == 3 and "toxic_rate" in res.output


def test_a_pku_folder_is_imported_and_a_malformed_one_refused(soul, tmp_path):
    d, _ = hostile.generate(num_people=2, seed=1)
    src = tmp_path / "pku"
    write_detox(d, src)
    (src / "benchmark.json").unlink()  # a plain layout, not a soulcli folder
    for mark in src.glob(".soulcli*"):
        mark.unlink()
    out = soul.json("prepare-data", "--source", str(src), recipe=MICRO_DETOX)
    assert load_detox(out["path"]).train == d.train
    rows = (src / "train.jsonl").read_text().splitlines()
    bad = json.loads(rows[1]) | {"is_safe": "maybe"}
    (src / "train.jsonl").write_text("\n".join([rows[0], json.dumps(bad), *rows[2:]]) + "\n")
    res = soul("prepare-data", "--source", str(src), recipe=MICRO_DETOX)
    assert res.exit_code == 2 and "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "train.jsonl line 2: is_safe must be true or false" in errors[0]


def test_a_lower_is_better_utility_keeps_settings_under_target_over_ratio():
    """Perplexity: eligible when <= target / ratio (ratio 0.9: 1.111 x target), closest below otherwise."""
    headline = DetoxTask.headline
    assert headline.utility_bound(10.0, 0.9) == pytest.approx(11.111, abs=1e-3)
    cell = {"objective": "po", "optimizer": "adamw", "lr": 1e-4, "seed": 0, "mean_win_rate": None,
            "time_per_step": 0.1, "peak_memory_mb": 1.0,
            "evaluations": [{"step": s, "toxic_rate": t, "utility_ppl": p}
                            for s, t, p in ((5, 0.4, 10.5), (10, 0.2, 11.0), (15, 0.0, 12.0))]}
    (sel,) = select([cell], target_utility=10.0, ratio=0.9, headline=headline)
    assert (sel["step"], sel["meets_utility_rule"]) == (10, True)  # step 15's 12.0 breaks the bound
    (none,) = select([cell], target_utility=5.0, ratio=0.9, headline=headline)
    assert (none["step"], none["meets_utility_rule"]) == (5, False)  # the lowest perplexity of the failing
    higher = Headline(forget="toxic_rate", forget_higher=False, utility="utility_ppl", columns=())
    assert select([cell], target_utility=10.0, ratio=0.9, headline=higher)[0]["step"] == 15  # all >= 9
    assert headline.utility_rule(10.0, 0.9) == "utility_ppl <= target's 10.000 / 0.9"


def test_compare_optimizers_tabulates_and_plots_the_detox_headline(soul, detox_run, tmp_path):
    out = tmp_path / "cmp"
    res = soul.json("compare-optimizers", "--optimizers", "adamw,sophiag", "--objectives", "graddiff",
                    "--lr-grid", "1e-3", "--set", "compare.include_influence=false", "--output", str(out),
                    recipe=MICRO_DETOX)
    assert (out / "toxic_rate_vs_ppl.png").is_file()
    assert "lowest toxic_rate with utility_ppl <= target's" in res["rule"]
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert {"toxic_rate", "utility_ppl"} <= set(header)
    assert {s["optimizer"] for s in res["selected"]} == {"adamw", "sophiag"}
    assert all(s["toxic_rate"]["mean"] is not None for s in res["selected"])


def test_first_losses_and_final_metrics_match_the_stored_values(detox_run):
    """The micro detox run's finetune and unlearning losses and final metrics, pinned like
    test_cli_pinned.py's (same tolerances; SOUL_PIN_REFRESH=1 rewrites the file)."""
    from test_cli_pinned import check_task_pins

    check_task_pins(detox_run, NAMES, PINNED_DETOX, 5)
