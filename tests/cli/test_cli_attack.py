"""`soul attack` on the micro run: attack.json's layout, the plot, the gates, an untouched model,
and bad input as one line with exit code 2."""

from __future__ import annotations

import hashlib
import json

import pytest

from soulcli.errors import GATE_FAILED_EXIT, USER_ERROR_EXIT

ARGS = ("--relearn-steps", "0,2", "--relearn-fraction", "0.25", "--quantize", "4", "--probe", "paraphrase")


def _hash(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def attacked(soul, pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("attack")
    weights = pipeline["run"] / "model" / "model.safetensors"
    before = _hash(weights)
    res = soul("attack", str(pipeline["run"]), *ARGS, "-o", str(out), "--json",
               "--fail-under", "relearn2.forget_truth_ratio=2", recipe=None)
    return {"res": res, "out": out, "unchanged": _hash(weights) == before}


def test_attack_writes_its_report_and_leaves_the_model_alone(attacked):
    res, out = attacked["res"], attacked["out"]
    assert attacked["unchanged"]
    assert res.exit_code == GATE_FAILED_EXIT  # the gate below: a truth ratio never exceeds 1
    report = json.loads((out / "attack.json").read_text())
    assert json.loads(res.stdout)["attack_json"] == str(out / "attack.json")
    assert (out / "attack.png").stat().st_size > 1000
    tracked = ["forget_quality", "model_utility", "forget_rougeL_recall", "retain_rougeL_recall", "forget_truth_ratio"]
    assert report["metrics"] == tracked and set(report["unlearned"]) == set(report["target"]) == set(tracked)
    relearn = report["relearn"]
    assert [p["label"] for p in relearn["points"]] == ["relearn0", "relearn2"]
    assert relearn["items"] == 2 and relearn["steps"] == [0, 2] and relearn["lr"] == 3e-3  # finetune.lr
    assert relearn["points"][0]["metrics"] == report["unlearned"]
    assert all(v in (0.0, None) for v in relearn["points"][0]["recovered"].values())
    quantize = report["quantize"]
    assert [p["bits"] for p in quantize["points"]] == [4] and "lm_head" not in quantize["layers"]
    assert len(quantize["layers"]) == 14  # 2 layers x (4 attention + 3 MLP projections)
    (probe,) = report["probe"]["points"]
    assert probe["label"] == "paraphrase" and "retain_rougeL_recall" not in probe["metrics"]
    assert "forget_rougeL_recall" in probe["metrics"]
    for p in relearn["points"] + quantize["points"] + [probe]:
        for name, share in p["recovered"].items():
            assert share is None or isinstance(share, float)
            if share is None:
                assert p["null_reasons"][f"recovered.{name}"]
    assert report["gates"]["relearn2.forget_truth_ratio"] == relearn["points"][1]["metrics"]["forget_truth_ratio"]


def test_a_failed_gate_names_the_attack_point(attacked):
    assert "gate --fail-under relearn2.forget_truth_ratio=2 failed: relearn2.forget_truth_ratio =" in attacked["res"].output


@pytest.mark.parametrize("args, message", [
    (("--attacks", "relearn,smash"), "attack.attacks[1]: 'smash' is not one of 'relearn', 'quantize', 'probe'"),
    (("--fail-over", "relearn7.forget_quality=0.5"), "unknown metric in gate 'relearn7.forget_quality'"),
    (("--quantize", "1"), "attack.quantize.bits[0]: must be >= 2 and <= 8, got 1"),
])
def test_bad_input_is_one_line_and_exit_2(soul, pipeline, args, message):
    res = soul("attack", str(pipeline["run"]), *args, recipe=None)
    assert res.exit_code == USER_ERROR_EXIT
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_a_run_folder_without_a_model_exits_2(soul, tmp_path):
    (tmp_path / "run").mkdir()
    res = soul("attack", str(tmp_path / "run"), recipe=None)
    assert res.exit_code == USER_ERROR_EXIT
    assert res.stderr.strip() == f"error: '{tmp_path / 'run'}' has no model/ folder; pass a run folder from `soul unlearn` or use --model"
