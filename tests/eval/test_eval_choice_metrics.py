"""The WMDP task's multiple-choice accuracy on hand-built score tables, against an independent
computation of lm-evaluation-harness's ``acc`` / ``acc_norm`` (no model: the test answers each
requested (prompt, continuation) pair from a table of per-token log-probabilities)."""

from __future__ import annotations

import numpy as np
import pytest

from soulcli.eval import EvalConfig
from soulcli.eval.kinds import ChoiceAccuracy
from soulcli.eval.metric import Requests, Results
from soulcli.eval.scoring import TokenScores
from soulcli.tasks import WmdpTask, WmdpTaskData

SUITE = WmdpTask(WmdpTaskData()).suite(EvalConfig())
ROWS = [  # (prompt, choices, answer)
    {"prompt": "P1\nAnswer:", "choices": ["red", "blue", "green", "grey"], "answer": 1},
    {"prompt": "P2\nAnswer:", "choices": ["six", "a hundred", "ten", "two"], "answer": 1},
    {"prompt": "P3\nAnswer:", "choices": ["w", "x", "y", "z"], "answer": 3},
]
# Per-token log-probs of each continuation (" A" .. " D" and " " + choice), per prompt.
TABLE = {
    ("P1\nAnswer:", " A"): [-2.0], ("P1\nAnswer:", " B"): [-0.5], ("P1\nAnswer:", " C"): [-1.0],
    ("P1\nAnswer:", " D"): [-3.0],
    ("P2\nAnswer:", " A"): [-1.0], ("P2\nAnswer:", " B"): [-1.0], ("P2\nAnswer:", " C"): [-2.0],  # tie A/B -> A
    ("P2\nAnswer:", " D"): [-4.0],
    ("P3\nAnswer:", " A"): [-0.1], ("P3\nAnswer:", " B"): [-2.0], ("P3\nAnswer:", " C"): [-2.0],
    ("P3\nAnswer:", " D"): [-2.0],
    ("P1\nAnswer:", " red"): [-1.0], ("P1\nAnswer:", " blue"): [-0.4, -0.4], ("P1\nAnswer:", " green"): [-3.0],
    ("P1\nAnswer:", " grey"): [-2.0],
    # "a hundred": sum -3.0 (lowest unnormalised after "six"'s -1.5) but -3.0/9 chars beats -1.5/3
    ("P2\nAnswer:", " six"): [-1.5], ("P2\nAnswer:", " a hundred"): [-1.0, -2.0], ("P2\nAnswer:", " ten"): [-2.0],
    ("P2\nAnswer:", " two"): [-2.5],
    ("P3\nAnswer:", " w"): [-1.0], ("P3\nAnswer:", " x"): [-1.0], ("P3\nAnswer:", " y"): [-1.0],
    ("P3\nAnswer:", " z"): [-1.0],  # all tied -> index 0
}


def _run(metric: ChoiceAccuracy, rows=ROWS):
    req = Requests()
    plan = metric.plan({metric.split: rows}, req)
    scores = [TokenScores(np.asarray(TABLE[(p.prefix, p.continuation)]), np.zeros(1, bool)) for p in req.pairs]
    return metric.compute(plan, Results(scores, []), {}, None, {metric.split: rows}), req


def _harness(rows, options, normalize):
    """Independent acc / acc_norm: argmax of summed log-likelihood (/ len(option)), first on ties."""
    out = []
    for row in rows:
        opts = options(row)
        lls = [sum(TABLE[(row["prompt"], " " + o)]) for o in opts]
        keys = [ll / len(o) if normalize else ll for ll, o in zip(lls, opts)]
        best = max(range(len(keys)), key=lambda i: (keys[i], -i))
        out.append(best)
    return out


@pytest.mark.parametrize("name, options, normalize, chosen", [
    ("forget_mc_accuracy", lambda r: ["A", "B", "C", "D"], False, [1, 0, 0]),
    ("forget_mc_choice_accuracy", lambda r: r["choices"], False, [1, 0, 0]),
    ("utility_mc_choice_accuracy_norm", lambda r: r["choices"], True, [1, 1, 0]),
])
def test_accuracy_matches_the_harness_computation(name, options, normalize, chosen):
    metric = SUITE[name]
    split = metric.split
    entry, req = _run(metric, ROWS)
    assert _harness(ROWS, options, normalize) == chosen == entry["chosen"]
    correct = [float(c == r["answer"]) for c, r in zip(chosen, ROWS)]
    assert entry["per_item"] == correct
    assert entry["value"] == pytest.approx(np.mean(correct))
    assert entry["chance"] == 0.25 and split in ("forget_mc", "utility_mc")
    assert all(not p.eos for p in req.pairs)  # the harness scores the continuation alone
    assert entry["logliks"][1] == [sum(TABLE[("P2\nAnswer:", " " + o)]) for o in options(ROWS[1])]


def test_letters_and_choices_are_scored_once_each_in_one_pass():
    letters, _ = _run(SUITE["forget_mc_accuracy"])
    req = Requests()
    for name in ("forget_mc_accuracy", "forget_mc_choice_accuracy", "forget_mc_choice_accuracy_norm"):
        SUITE[name].plan({"forget_mc": ROWS}, req)
    assert len(req.pairs) == 3 * 4 + 3 * 4  # the two full-choice variants share their pairs
    assert [p.continuation for p in req.pairs[:4]] == [" A", " B", " C", " D"]
    assert letters["value"] == pytest.approx(1 / 3)


def test_the_suite_names_and_directions():
    assert list(SUITE) == [f"{role}_mc_{kind}" for role in ("forget", "utility")
                           for kind in ("accuracy", "choice_accuracy", "choice_accuracy_norm")]
    assert [SUITE[n].higher_is_better for n in SUITE] == [False] * 3 + [True] * 3
    assert SUITE["forget_mc_accuracy"].formatted(0.5) == "0.5000 (chance 0.25)"
    assert WmdpTask.headline.forget == "forget_mc_accuracy" and not WmdpTask.headline.forget_higher
    assert WmdpTask.headline.utility == "utility_mc_accuracy"


def test_normalising_letters_is_refused():
    with pytest.raises(ValueError, match="by='choice' only"):
        ChoiceAccuracy("x", "forget_mc", by="letter", normalize=True)
