"""Keeping the best state (workflows.tracking): the rule on hand-built curves, and a micro run
with ``unlearn.keep: best`` whose saved model is the chosen step's."""

from __future__ import annotations

import json
import math

import pytest

from soulcli.tasks import DetoxTask, MuseTask, TofuTask, WmdpTask
from soulcli.workflows.compare import select
from soulcli.workflows.tracking import choose

TOFU, MUSE, DETOX, WMDP = TofuTask.headline, MuseTask.headline, DetoxTask.headline, WmdpTask.headline
NAN = math.nan


def curve(*points: tuple[int, float, float], headline=TOFU) -> list[dict]:
    return [{"step": s, headline.forget: f, headline.utility: u} for s, f, u in points]


@pytest.mark.parametrize("points, floor, step", [
    # step 6 forgets best but breaks the floor 0.76 (0.95 x 0.8); step 4 also: step 2 is kept
    ([(0, 0.01, 0.8), (2, 0.3, 0.79), (4, 0.6, 0.7), (6, 0.9, 0.5)], 0.76, 2),
    # a NaN forget or utility value is never chosen, however good the other value is
    ([(0, 0.01, 0.8), (2, NAN, 0.8), (4, 0.9, NAN), (6, 0.1, 0.78), (8, None, 0.8)], 0.76, 6),
    # no step keeps utility: the highest utility (ties broken by the forget metric)
    ([(0, 0.01, 0.8), (2, 0.5, 0.3), (4, 0.9, 0.6), (6, 0.95, 0.6)], 0.76, 6),
    # equals: the earliest step
    ([(0, 0.01, 0.8), (2, 0.3, 0.8), (4, 0.3, 0.8)], 0.76, 2),
    # the target (step 0) is never kept, even when the rule would rank it first
    ([(0, 0.9, 0.8), (2, 0.1, 0.8)], 0.76, 2),
    # a NaN floor (the target's utility unknown): nothing passes, the highest utility is kept
    ([(0, 0.01, NAN), (2, 0.5, 0.7), (4, 0.9, 0.6)], NAN, 2),
])
def test_the_rule_keeps_the_best_forget_quality_among_steps_that_keep_utility(points, floor, step):
    assert choose(curve(*points), TOFU, floor)["step"] == step


def test_a_lower_is_better_forget_metric_keeps_the_lowest():
    points = [(0, 0.5, 0.4), (2, 0.3, 0.39), (4, 0.1, 0.2), (6, 0.35, 0.4)]  # floor 0.38
    assert choose(curve(*points, headline=MUSE), MUSE, 0.38)["step"] == 2


def test_wmdp_keeps_the_forget_accuracy_nearest_chance_not_the_lowest():
    """Step 4's accuracy 0.05 is the lowest but 0.20 from chance (the model still tells the
    answers apart, by avoiding them); step 6's 0.27 is 0.02 from it. Utility floor 0.9."""
    points = [(0, 1.0, 1.0), (2, 0.6, 1.0), (4, 0.05, 0.97), (6, 0.27, 0.95), (8, 0.25, 0.5)]
    assert choose(curve(*points, headline=WMDP), WMDP, 0.9)["step"] == 6
    assert [WMDP.forget_score(v) for v in (0.05, 0.27, 0.25)] == pytest.approx([-0.2, -0.02, 0.0])
    assert WMDP.forget_better == "closest to 0.25" and MUSE.forget_better == "lowest"


def test_a_lower_is_better_utility_keeps_steps_at_most_the_bound():
    """Detox: toxic rate lower is better, perplexity lower is better; the bound 8.8 is the
    target's 8.0 / 0.909. Step 4 is least toxic but too perplexed; if no step keeps the bound,
    the lowest perplexity is kept."""
    bound = DETOX.utility_bound(8.0, 0.909)
    assert bound == pytest.approx(8.0 / 0.909)
    points = [(0, 0.5, 8.0), (2, 0.2, 8.5), (4, 0.0, 9.5), (6, 0.3, 8.1)]
    assert choose(curve(*points, headline=DETOX), DETOX, bound)["step"] == 2
    points = [(0, 0.5, 8.0), (2, 0.2, 12.0), (4, 0.0, 9.5)]
    assert choose(curve(*points, headline=DETOX), DETOX, bound)["step"] == 4


def test_no_finite_step_keeps_nothing():
    assert choose(curve((0, 0.1, 0.8), (2, NAN, 0.8), (4, 0.5, NAN)), TOFU, 0.76) is None


def test_compare_never_selects_a_setting_with_non_finite_means():
    def cell(lr, fq, mu):
        return {"objective": "ga", "optimizer": "adamw", "lr": lr, "seed": 0, "mean_win_rate": None,
                "time_per_step": 0.1, "peak_memory_mb": 1.0,
                "evaluations": [{"step": 5, "forget_quality": fq, "model_utility": mu}]}

    # a NaN setting listed first used to stay selected (NaN compares false both ways)
    (sel,) = select([cell(1e-2, NAN, 0.8), cell(1e-3, 0.1, 0.5)], 0.8, 0.9, TOFU)
    assert (sel["lr"], sel["meets_utility_rule"]) == (1e-3, False)


def _rows(run) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("seconds", "step_seconds")} for row in rows]


def test_keep_best_saves_and_evaluates_the_chosen_step(soul, pipeline, tmp_path):
    """lr 1e-3 over 6 steps, evaluated every 2: the kept step is the one the stated rule picks
    from the curve (recomputed here: the best forget quality among steps with model utility >=
    0.95 x the target's, else the highest utility), not the last; the saved model, evaluated
    anew, has the chosen step's values, and a run that evaluates nothing trains the same steps
    and ends at the curve's last point."""
    run, plain = tmp_path / "best", tmp_path / "last"
    same = ("--set", "unlearn.epochs=3", "--set", "optimizer.lr=1e-3",
            "--set", "eval.metrics=[forget_quality,model_utility]")
    res = soul("unlearn", "-o", str(run), *same, "--set", "unlearn.keep=best", "--set", "unlearn.eval_every=2")
    assert res.exit_code == 0, res.output
    kept = json.loads((run / "summary.json").read_text())["kept"]
    assert [e["step"] for e in kept["curve"]] == [0, 2, 4, 6]
    fq = {e["step"]: e["forget_quality"] for e in kept["curve"]}
    mu = {e["step"]: e["model_utility"] for e in kept["curve"]}
    keeping = [s for s in fq if s > 0 and mu[s] >= 0.95 * mu[0]]
    best = (max(keeping, key=lambda s: (fq[s], -s)) if keeping
            else max((s for s in fq if s > 0), key=lambda s: (mu[s], -s)))
    assert (kept["keep"], kept["step"], kept["meets_utility_floor"], kept["eval_every"]) == (
        "best", best, bool(keeping), 2)
    assert (best, bool(keeping)) == (4, True) and (fq[4], mu[4]) != (fq[6], mu[6])  # pinned micro curve
    assert kept["rule"] == ("highest forget_quality among evaluated steps with model_utility >= 0.95 x "
                            f"the target's {mu[0]:.4g}; if none, the highest model_utility")
    saved = json.loads((run / "eval.json").read_text())["metrics"]
    assert (saved["forget_quality"]["value"], saved["model_utility"]["value"]) == (fq[4], mu[4])
    again = soul.json("evaluate", str(run), "--metrics", "forget_quality", "--output", str(tmp_path / "e.json"))
    assert again["forget_quality"] == fq[4]

    res = soul("unlearn", "-o", str(plain), *same)  # keep: last, no evaluation during the run
    assert res.exit_code == 0, res.output
    last = json.loads((plain / "summary.json").read_text())
    assert (last["kept"]["keep"], last["kept"]["step"], last["kept"]["curve"]) == ("last", 6, [])
    assert _rows(plain) == _rows(run)
    assert (last["metrics"]["forget_quality"], last["metrics"]["model_utility"]) == (fq[6], mu[6])
