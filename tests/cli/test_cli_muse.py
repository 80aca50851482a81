"""The muse task through the real CLI on the micro recipe: prepare-data, finetune (target and
retrain), unlearn, evaluate with a gate; MUSE-layout folders read and refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from soulcli.data import books, muse

MICRO_MUSE = Path(__file__).resolve().parents[1] / "assets" / "micro_muse.yaml"
NAMES = ("forget_verbmem_rougeL", "forget_knowmem_rougeL", "retain_knowmem_rougeL", "mia_mink_auc",
         "privleak", "forget_leak_bleu", "forget_leak_rougeL")


@pytest.fixture(scope="module")
def muse_run(soul, tmp_path_factory):
    work = tmp_path_factory.mktemp("muse")
    prepared = soul.json("prepare-data", recipe=MICRO_MUSE)
    finetuned = soul.json("finetune", recipe=MICRO_MUSE)
    unlearned = soul.json("unlearn", "--output", str(work / "run"), recipe=MICRO_MUSE)
    return {"prepared": prepared, "finetuned": finetuned, "unlearned": unlearned, "run": work / "run"}


def test_the_muse_pipeline_trains_unlearns_and_evaluates(muse_run):
    data = Path(muse_run["prepared"]["path"])
    assert (data / "verbmem" / "forget.json").is_file() and (data / "raw" / "retain1.json").is_file()
    models = muse_run["finetuned"]["models"]
    assert models["target"]["split"].startswith("raw/forget + raw/retain1 + raw/retain2")
    assert models["retain"]["split"].startswith("raw/retain1 + raw/retain2")
    assert set(muse_run["finetuned"]["target_metrics"]) == set(NAMES)
    run = muse_run["run"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "muse" and summary["steps"] == 4  # 4 forget passages / batch 4... x 1 epoch
    ev = json.loads((run / "eval.json").read_text())
    assert list(ev["metrics"]) == list(NAMES)
    for name in NAMES:
        entry = ev["metrics"][name]
        assert entry["value"] is not None, (name, entry)
        if name not in ("privleak", "mia_mink_auc"):
            assert len(entry["per_item"]) == ev["splits"][{
                "forget_verbmem_rougeL": "verbmem_forget", "forget_knowmem_rougeL": "knowmem_forget",
                "retain_knowmem_rougeL": "knowmem_retain"}.get(name, "leak_forget")]["items"]
    assert ev["metrics"]["privleak"]["reference_auc"] is not None  # against the retrain model


def test_evaluate_gates_a_muse_metric(soul, muse_run):
    res = soul("evaluate", str(muse_run["run"]), "--fail-over", "mia_mink_auc=0", "--json", recipe=None)
    assert res.exit_code == 3 and "mia_mink_auc" in res.output
    res = soul("evaluate", str(muse_run["run"]), "--fail-over", "forget_quality=0.5", recipe=None)
    assert res.exit_code == 2 and "unknown metric in gate 'forget_quality'" in res.output


def test_objectives_that_replace_answers_are_refused_on_raw_text(soul, muse_run, tmp_path):
    res = soul("unlearn", "--set", "unlearn.objective=dpo", "--output", str(tmp_path / "x"), recipe=MICRO_MUSE)
    assert res.exit_code == 2
    assert "raw text" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x").exists()


def test_a_muse_folder_is_imported_and_a_malformed_one_refused(soul, tmp_path):
    corpus = books.generate_corpus(num_books=4, passages_per_book=4, seed=3)
    src = tmp_path / "MUSE-Books"
    muse.write_muse(corpus, src)
    (src / "benchmark.json").unlink()  # a plain MUSE layout, not a soulcli folder
    for mark in src.glob(".soulcli*"):
        mark.unlink()
    out = soul.json("prepare-data", "--source", str(src), recipe=MICRO_MUSE)
    assert muse.load_muse(out["path"]).verbmem == corpus.verbmem
    (src / "verbmem" / "forget.json").write_text('[{"prompt": "only a prompt"}]')
    res = soul("prepare-data", "--source", str(src), recipe=MICRO_MUSE)
    assert res.exit_code == 2 and "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "verbmem/forget.json item 1: missing field(s) gt" in errors[0]


def test_compare_optimizers_tabulates_and_plots_the_muse_headline(soul, muse_run, tmp_path):
    out = tmp_path / "cmp"
    res = soul.json("compare-optimizers", "--optimizers", "adamw,sophiag", "--objectives", "graddiff",
                    "--lr-grid", "1e-3", "--set", "compare.include_influence=false", "--output", str(out),
                    recipe=MICRO_MUSE)
    assert (out / "verbmem_vs_knowmem.png").is_file() and (out / "curves.png").is_file()
    assert "lowest forget_verbmem_rougeL with retain_knowmem_rougeL >= 0.9" in res["rule"]
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert {"forget_verbmem_rougeL", "retain_knowmem_rougeL", "privleak", "forget_leak_bleu"} <= set(header)
    assert {s["optimizer"] for s in res["selected"]} == {"adamw", "sophiag"}
    assert all(s["forget_verbmem_rougeL"]["mean"] is not None for s in res["selected"])


PINNED_MUSE = Path(__file__).resolve().parents[1] / "assets" / "pinned_micro_muse.json"


def test_first_losses_and_final_metrics_match_the_stored_values(muse_run):
    """The micro MUSE run's finetune and unlearning losses and final metrics, pinned like
    test_cli_pinned.py's (same tolerances; SOUL_PIN_REFRESH=1 rewrites the file)."""
    from test_cli_pinned import check_task_pins

    check_task_pins(muse_run, NAMES, PINNED_MUSE, 4)
