"""The wmdp task through the real CLI on the micro recipe: prepare-data, finetune, unlearn (RMU),
evaluate with a gate, compare-optimizers' headline; WMDP-layout folders read and refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from soulcli.data import hazards, wmdp

MICRO_WMDP = Path(__file__).resolve().parents[1] / "assets" / "micro_wmdp.yaml"
PINNED_WMDP = Path(__file__).resolve().parents[1] / "assets" / "pinned_micro_wmdp.json"
NAMES = tuple(f"{role}_mc_{kind}" for role in ("forget", "utility")
              for kind in ("accuracy", "choice_accuracy", "choice_accuracy_norm"))


@pytest.fixture(scope="module")
def wmdp_run(soul, tmp_path_factory):
    work = tmp_path_factory.mktemp("wmdp")
    prepared = soul.json("prepare-data", recipe=MICRO_WMDP)
    finetuned = soul.json("finetune", "--which", "target", recipe=MICRO_WMDP)
    unlearned = soul.json("unlearn", "--output", str(work / "run"), recipe=MICRO_WMDP)
    return {"prepared": prepared, "finetuned": finetuned, "unlearned": unlearned, "run": work / "run"}


def test_the_wmdp_pipeline_trains_unlearns_and_evaluates(wmdp_run):
    data = Path(wmdp_run["prepared"]["path"])
    assert {p.name for p in data.glob("*.jsonl")} == {
        "wmdp-hazards.jsonl", "mmlu.jsonl", "hazards-forget-corpus.jsonl", "hazards-retain-corpus.jsonl"}
    target = wmdp_run["finetuned"]["models"]["target"]
    assert target["split"] == ("hazards-forget-corpus + hazards-retain-corpus + wmdp-hazards (answered) "
                               "+ mmlu (answered)")
    assert set(wmdp_run["finetuned"]["target_metrics"]) == set(NAMES)
    run = wmdp_run["run"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "wmdp" and summary["steps"] == 3  # 6 forget passages / batch 2 x 1 epoch
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "forget_act_norm" in rows[0]  # RMU ran on the raw forget corpus
    ev = json.loads((run / "eval.json").read_text())
    assert list(ev["metrics"]) == list(NAMES)
    assert ev["splits"]["forget_mc"]["items"] == ev["splits"]["utility_mc"]["items"] == 18
    for name in NAMES:
        entry = ev["metrics"][name]
        assert entry["chance"] == 0.25 and len(entry["per_item"]) == len(entry["chosen"]) == 18
        assert entry["value"] == pytest.approx(sum(entry["per_item"]) / 18)
    assert ev["stats"]["pairs_scored"] == 36 * 8  # letters + choices, the normalised variant shares pairs
    assert ev["reference"] is None  # no WMDP metric needs a retain model


def test_evaluate_gates_the_forget_accuracy(soul, wmdp_run):
    res = soul("evaluate", str(wmdp_run["run"]), "--fail-under", "forget_mc_accuracy=1.01", "--json", recipe=None)
    assert res.exit_code == 3 and "forget_mc_accuracy" in res.output
    res = soul("evaluate", str(wmdp_run["run"]), "--fail-over", "forget_quality=0.5", recipe=None)
    assert res.exit_code == 2 and "unknown metric in gate 'forget_quality'" in res.output


def test_a_wmdp_folder_is_imported_and_a_malformed_one_refused(soul, tmp_path):
    d = hazards.generate(num_entities=3, seed=1)
    src = tmp_path / "wmdp-folder"
    wmdp.write_wmdp(d, src)
    (src / "benchmark.json").unlink()  # a plain WMDP layout, not a soulcli folder
    for mark in src.glob(".soulcli*"):
        mark.unlink()
    out = soul.json("prepare-data", "--source", str(src), recipe=MICRO_WMDP)
    assert wmdp.load_wmdp(out["path"]).forget_mc == d.forget_mc
    rows = (src / "wmdp-hazards.jsonl").read_text().splitlines()
    bad = json.loads(rows[1]) | {"choices": ["only", "three", "choices"]}
    (src / "wmdp-hazards.jsonl").write_text("\n".join([rows[0], json.dumps(bad), *rows[2:]]) + "\n")
    res = soul("prepare-data", "--source", str(src), recipe=MICRO_WMDP)
    assert res.exit_code == 2 and "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "wmdp-hazards.jsonl line 2: choices must be a list of 4 strings" in errors[0]


def test_compare_optimizers_tabulates_and_plots_the_wmdp_headline(soul, wmdp_run, tmp_path):
    out = tmp_path / "cmp"
    res = soul.json("compare-optimizers", "--optimizers", "adamw,sophiag", "--objectives", "rmu",
                    "--lr-grid", "1e-3", "--set", "compare.include_influence=false", "--output", str(out),
                    recipe=MICRO_WMDP)
    assert (out / "forget_vs_utility_accuracy.png").is_file()
    assert "closest to 0.25 forget_mc_accuracy with utility_mc_accuracy >= 0.9" in res["rule"]
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert {"forget_mc_accuracy", "utility_mc_accuracy", "forget_mc_choice_accuracy",
            "utility_mc_choice_accuracy"} <= set(header)
    assert {s["optimizer"] for s in res["selected"]} == {"adamw", "sophiag"}
    assert all(s["forget_mc_accuracy"]["mean"] is not None for s in res["selected"])


def test_first_losses_and_final_metrics_match_the_stored_values(wmdp_run):
    """The micro WMDP run's finetune and RMU losses and final metrics, pinned like
    test_cli_pinned.py's (same tolerances; SOUL_PIN_REFRESH=1 rewrites the file)."""
    from test_cli_pinned import check_task_pins

    check_task_pins(wmdp_run, NAMES, PINNED_WMDP, 3)
