"""The whole protocol through the real CLI on a micro recipe: files and numbers."""

from __future__ import annotations

import json
import math

import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer


def test_prepare_data_writes_every_tofu_split(pipeline):
    counts = pipeline["prepared"]["counts"]
    for name in ("full", "forget01", "forget05", "forget10", "retain99", "retain95", "retain90",
                 "forget10_perturbed", "retain_perturbed", "holdout", "real_authors_perturbed",
                 "world_facts_perturbed"):
        assert counts[name] > 0, name
    assert counts["full"] == 20 * 4
    assert counts["forget10"] + counts["retain90"] == counts["full"]


def test_finetune_trains_both_models_and_evaluates_the_target(pipeline):
    models = pipeline["finetuned"]["models"]
    assert set(models) == {"target", "retain"}
    assert models["target"]["split"] == "full + general_knowledge"
    assert models["retain"]["split"] == "retain90 + general_knowledge"
    assert models["target"]["steps"] == 4 * math.ceil((80 + models["target"]["items"] - 80) / 16)
    for m in models.values():  # plain HF folders, loadable without soulcli
        AutoModelForCausalLM.from_pretrained(m["path"])
        tok = AutoTokenizer.from_pretrained(m["path"])
        assert tok.pad_token_id != tok.eos_token_id
    metrics = pipeline["finetuned"]["target_metrics"]
    assert 0.0 <= metrics["forget_rougeL_recall"] <= 1.0
    assert 0.0 <= metrics["forget_quality"] <= 1.0


def test_unlearn_run_folder(pipeline):
    run = pipeline["run"]
    for name in ("model/config.json", "model/model.safetensors", "resolved_recipe.yaml", "versions.json",
                 "metrics.jsonl", "eval.json", "summary.json"):
        assert (run / name).is_file(), name
    assert not list(run.parent.glob(".run.tmp-*"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # 8 forget items (2 authors x 4 questions), batch 4, 1 epoch
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("loss", "forget_loss", "retain_loss", "lr", "grad_norm", "seconds", "win_rate"):
            assert key in r and math.isfinite(r[key]), key
        assert r["lr"] == 1e-3
        assert 0.0 <= r["win_rate"] <= 1.0
        # GradDiff: loss = -NLL(forget) + NLL(retain)
        assert math.isclose(r["loss"], r["forget_loss"] + r["retain_loss"], rel_tol=1e-5, abs_tol=1e-6)
    resolved = yaml.safe_load((run / "resolved_recipe.yaml").read_text())
    assert resolved["optimizer"]["name"] == "sophiag" and resolved["unlearn"]["objective"] == "graddiff"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["optimizer"] == "sophiag"
    assert set(json.loads((run / "versions.json").read_text())) >= {"torch", "transformers", "soulcli"}
    unlearned = pipeline["unlearned"]
    assert unlearned["metrics"]["model_utility"] == summary["metrics"]["model_utility"]


def test_evaluate_run_dir_json_and_gates(soul, pipeline):
    run = pipeline["run"]
    out = soul.json("evaluate", str(run), recipe=None)
    ev = json.loads((run / "eval.json").read_text())
    assert out["forget_quality"] == ev["metrics"]["forget_quality"]["value"]
    assert 0.0 <= out["model_utility"] <= 1.0
    assert len(ev["metrics"]["forget_truth_ratio"]["per_item"]) == 8
    res = soul("evaluate", str(run), "--fail-under", "model_utility=1.01", "--fail-over",
               "forget_rougeL_recall=-1", recipe=None)
    assert res.exit_code == 3
    assert "model_utility" in res.stderr and "forget_rougeL_recall" in res.stderr
    res = soul("evaluate", str(run), "--fail-under", "model_utility=0", recipe=None)
    assert res.exit_code == 0


def test_evaluate_model_path_with_reference_json(soul, pipeline):
    run = pipeline["run"]
    target = pipeline["finetuned"]["models"]["target"]["path"]
    retain_eval = pipeline["work"] / "retain_eval.json"
    retain = pipeline["finetuned"]["models"]["retain"]["path"]
    soul.json("evaluate", "--model", retain, "--output", str(retain_eval), "--set", "model.reference=none")
    out = soul.json("evaluate", "--model", target, "--reference", str(retain_eval), "--output",
                    str(run.parent / "target_eval.json"))
    again = json.loads((run.parent / "target_eval.json").read_text())
    assert out["forget_quality"] == again["metrics"]["forget_quality"]["value"] is not None


def test_json_stdout_is_only_json(soul, pipeline):
    res = soul("evaluate", str(pipeline["run"]), "--json", "--metrics", "forget_prob", recipe=None)
    assert res.exit_code == 0
    parsed = json.loads(res.stdout)
    assert set(parsed) >= {"forget_prob", "eval_json"}
