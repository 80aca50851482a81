"""The summary table and the CI gates."""

from __future__ import annotations

import pytest
from rich.console import Console

from soulcli.errors import UserError
from soulcli.data.template import PromptTemplate
from soulcli.eval.report import check_gates, parse_gate, render_summary
from tofu_eval_helpers import tofu_suite

SUITE = tofu_suite(PromptTemplate())

RESULT = {
    "metrics": {
        "model_utility": {"value": 0.42},
        "forget_rougeL_recall": {"value": 0.35, "per_item": [0.3, 0.4], "generations": ["a", "b"]},
        "forget_quality": {"value": None, "unavailable": "no reference given"},
        "privleak": {"value": -12.5},
    },
    "splits": {"forget": {"items": 2}},
}


def test_parse_gate():
    assert parse_gate("model_utility=0.5") == ("model_utility", 0.5)
    assert parse_gate(" forget_rougeL_recall = 3e-1") == ("forget_rougeL_recall", 0.3)
    with pytest.raises(UserError, match="METRIC=THRESHOLD"):
        parse_gate("model_utility")
    with pytest.raises(UserError, match="not a number"):
        parse_gate("model_utility=high")
    assert parse_gate("model_utilty=0.5") == ("model_utilty", 0.5)  # no suite: any name
    with pytest.raises(UserError, match="did you mean 'model_utility'"):
        parse_gate("model_utilty=0.5", SUITE)


def test_gates_fail_with_messages_naming_the_gate():
    failures = check_gates(
        RESULT, fail_under=["model_utility=0.5"], fail_over=["forget_rougeL_recall=0.3"]
    )
    assert failures == [
        "gate --fail-under model_utility=0.5 failed: model_utility = 0.4200 is below 0.5",
        "gate --fail-over forget_rougeL_recall=0.3 failed: forget_rougeL_recall = 0.3500 is above 0.3",
    ]


def test_gates_pass_at_and_beyond_the_threshold():
    assert (
        check_gates(
            RESULT, fail_under=[("model_utility", 0.42)], fail_over=["forget_rougeL_recall=0.35"]
        )
        == []
    )
    assert check_gates(RESULT, fail_over=["privleak=0"]) == []


def test_a_gate_on_a_missing_value_fails():
    failures = check_gates(RESULT, fail_under=["forget_quality=0.05", "mia_loss_auc=0.1"])
    assert failures == [
        "gate --fail-under forget_quality=0.05 failed: forget_quality is unavailable (no reference given)",
        "gate --fail-under mia_loss_auc=0.1 failed: mia_loss_auc was not computed (add it to the metrics selection)",
    ]
    with pytest.raises(UserError, match="did you mean"):
        check_gates(RESULT, fail_over=["forget_rouge=0.3"], suite=SUITE)


def test_render_summary_lists_values_and_reasons():
    console = Console(record=True, width=200)
    render_summary(RESULT, console, SUITE)
    text = console.export_text()
    for fragment in (
        "model_utility",
        "0.4200",
        "forget_rougeL_recall",
        "0.3500",
        "-12.50%",
        "no reference given",
    ):
        assert fragment in text
    assert "forget: 2 items" in text and "limited" not in text


def test_a_limited_evaluation_says_so_under_the_table():
    console = Console(record=True, width=200)
    render_summary({**RESULT, "splits": {"forget": {"items": 2, "of": 40}}, "limited": True}, console, SUITE)
    text = console.export_text()
    assert "forget: 2 of 40 items" in text and "limited by eval.max_items: not a full evaluation" in text


def test_a_gate_on_a_nan_value_fails():
    """NaN compares false with everything, so without the check both gates below would pass."""
    result = {"metrics": {"forget_rougeL_recall": {"value": float("nan")}, "model_utility": {"value": float("inf")}}}
    assert check_gates(result, fail_over=["forget_rougeL_recall=0.3"], fail_under=["model_utility=0.5"]) == [
        "gate --fail-under model_utility=0.5 failed: model_utility is inf, not a finite number",
        "gate --fail-over forget_rougeL_recall=0.3 failed: forget_rougeL_recall is nan, not a finite number",
    ]
