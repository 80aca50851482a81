"""The headline metrics during an unlearning run, and the state kept by them.

One mechanism for "evaluate the task's headline (:class:`soulcli.tasks.Headline`) every
``unlearn.eval_every`` steps": compare-optimizers records each cell's curve with it, and
`soul unlearn` records its curve in ``summary.json`` and, with ``unlearn.keep: best``, saves
the best evaluated step's state instead of the last one's.

The rule (:func:`rank`, shared with compare-optimizers' selection): a setting whose utility
metric is >= the floor (``unlearn.utility_floor`` x the target's; compare:
``compare.utility_ratio`` x) ranks above every one that is not; among those that keep utility
the best forget metric wins (TOFU: the highest forget quality; MUSE: the lowest forget
VerbMem; WMDP: the forget accuracy nearest chance, :attr:`Headline.forget_goal`), among those that do not the highest utility. A setting with a missing or non-finite
forget or utility value is never chosen; ties go to the earliest step. Step 0 (the target) is
evaluated for the floor, but never kept: the run's output is an unlearned model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from soulcli.recipe import Recipe
from soulcli.tasks import Headline
from soulcli.workflows import common
from soulcli.workflows.evaluate import eval_config


def planned_steps(recipe: Recipe, n_forget: int) -> int:
    """The number of unlearning steps of one process (``engine.sampling.plan_unlearning``)."""
    u = recipe.unlearn
    steps = u.epochs * -(-n_forget // u.batch_size)
    return min(steps, u.max_steps) if u.max_steps else steps


def eval_interval(recipe: Recipe, steps: int) -> int:
    """``unlearn.eval_every``, or about five evaluations per run when unset."""
    return recipe.unlearn.eval_every or max(1, steps // 5)


def step_plan(recipe: Recipe, n_forget: int) -> tuple[int, int]:
    """A run's (steps, evaluation interval): :func:`planned_steps` and :func:`eval_interval`."""
    steps = planned_steps(recipe, n_forget)
    return steps, eval_interval(recipe, steps)


def rank(entry: dict[str, Any], headline: Headline, bound: float) -> tuple[bool, float, float] | None:
    """How an evaluated setting ranks under the rule (the greater, the better): first whether its
    utility keeps ``bound`` (:meth:`Headline.utility_bound`: at least it, or at most it for a
    lower-is-better utility such as perplexity), then the forget metric, else the utility nearest
    the bound; None when a value is missing or not finite (a NaN never passes the bound)."""
    forget, utility = entry.get(headline.forget), entry.get(headline.utility)
    if forget is None or utility is None or not (math.isfinite(forget) and math.isfinite(utility)):
        return None
    forget = headline.forget_score(forget)
    utility, bound = headline.utility_sign * utility, headline.utility_sign * bound
    return (True, forget, utility) if utility >= bound else (False, utility, forget)


def choose(curve: list[dict[str, Any]], headline: Headline, floor: float) -> dict[str, Any] | None:
    """The evaluated step (step > 0) the rule keeps, the earliest among equals; None when no
    step has finite forget and utility values."""
    best, best_key = None, None
    for entry in curve:
        key = rank(entry, headline, floor) if entry["step"] > 0 else None
        if key is not None and (best_key is None or key > best_key):
            best, best_key = entry, key
    return best


def rule_sentence(headline: Headline, ratio: float, target_utility: float | None) -> str:
    """The rule in words, with the floor's value."""
    better = headline.forget_better
    target = "nan" if target_utility is None else f"{target_utility:.4g}"
    if headline.utility_higher:
        keeps, nearest = f"{headline.utility} >= {ratio:g} x the target's {target}", "highest"
    else:
        keeps, nearest = f"{headline.utility} <= the target's {target} / {ratio:g}", "lowest"
    return f"{better} {headline.forget} among evaluated steps with {keeps}; if none, the {nearest} {headline.utility}"


class HeadlineTracker:
    """Evaluates the headline metrics of the model being trained every ``every`` steps (an
    ``on_step_end`` hook of :func:`soulcli.engine.loop.train`); with ``keep_best`` it holds a CPU
    copy of the trainable parameters (the whole model, or the LoRA adapter) of the step the rule
    ranks best so far. Its state goes into the run's checkpoints, so a resumed run keeps it.

    ``every`` None: it evaluates nothing (a run that is not tracked). Keep-best needs the
    target's utility: call :meth:`evaluate` ``(0)`` before training.
    """

    def __init__(self, recipe: Recipe, model: torch.nn.Module, tokenizer: Any, data_dir: Path,
                 reference: dict | None, every: int | None, keep_best: bool = False) -> None:
        task = common.task_of(recipe, tokenizer)
        self.headline = task.headline
        self.model, self.tokenizer, self.reference = model, tokenizer, reference
        self.cfg = eval_config(recipe, self.headline.tracked)
        self.suite, self.splits = task.suite(self.cfg), task.eval_splits(data_dir)
        self.every, self.keep_best, self.ratio = every, keep_best, recipe.unlearn.utility_floor
        self.curve: list[dict[str, Any]] = []
        self.best_step: int | None = None
        self.best: dict[str, torch.Tensor] = {}

    @property
    def target_utility(self) -> float | None:
        start = self.curve[0] if self.curve and self.curve[0]["step"] == 0 else {}
        return start.get(self.headline.utility)

    @property
    def floor(self) -> float:
        utility = self.target_utility
        return math.nan if utility is None else self.headline.utility_bound(utility, self.ratio)

    def evaluate(self, step: int) -> dict[str, Any]:
        """Evaluate the model now, as step ``step``; returns the curve's new entry."""
        from soulcli.eval import evaluate_model

        res = evaluate_model(self.model, self.tokenizer, self.suite, self.splits, self.cfg,
                             reference=self.reference)
        entry = {"step": step, **{k: res["metrics"][k].get("value") for k in self.headline.tracked}}
        self.curve.append(entry)
        if self.keep_best and choose(self.curve, self.headline, self.floor) is entry:
            self.best_step = step
            self.best = {n: p.detach().to("cpu", copy=True)
                         for n, p in self.model.named_parameters() if p.requires_grad}
        return entry

    def __call__(self, step: int) -> None:
        if self.every and step % self.every == 0:
            self.evaluate(step)

    def finish(self, steps: int) -> None:
        """Evaluate the last step (``steps``) unless it was, or nothing is tracked."""
        if self.every and (not self.curve or self.curve[-1]["step"] != steps):
            self.evaluate(steps)

    def restore_best(self) -> None:
        """Put the kept parameters back into the model (keep-best, when a step was kept)."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in self.best.items():
                params[name].copy_(value)

    def kept(self, steps: int) -> tuple[dict[str, Any], str | None]:
        """What ``summary.json`` records of the kept state, and a warning when the rule could not
        be met (no step kept the utility floor, or none had finite values)."""
        if not self.keep_best:
            return {"keep": "last", "step": steps, "rule": "the last step", "curve": self.curve}, None
        out = {"keep": "best", "rule": rule_sentence(self.headline, self.ratio, self.target_utility),
               "eval_every": self.every, "curve": self.curve}
        chosen = next((e for e in self.curve if e["step"] == self.best_step), None)
        if chosen is None:
            return ({**out, "step": steps, "meets_utility_floor": False},
                    f"no evaluated step had finite {self.headline.forget} and {self.headline.utility} "
                    f"values; the last step ({steps}) is kept")
        meets = bool(rank(chosen, self.headline, self.floor)[0])
        warning = None if meets else (
            f"no evaluated step kept {self.headline.utility} >= {self.ratio:g} x the target's; kept "
            f"step {chosen['step']}, the one with the highest {self.headline.utility}")
        return {**out, "step": chosen["step"], "meets_utility_floor": meets}, warning

    def state_dict(self) -> dict[str, Any]:
        return {"curve": self.curve, "best_step": self.best_step, "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curve, self.best_step, self.best = state["curve"], state["best_step"], state["best"]


def unlearn_tracker(recipe: Recipe, model: torch.nn.Module, tokenizer: Any, data_dir: Path,
                    reference: dict | None) -> HeadlineTracker:
    """`soul unlearn`'s tracker: evaluating every ``unlearn.eval_every`` steps (about five times
    per run for ``keep: best`` without it), the target first as step 0; inert when neither is set."""
    u = recipe.unlearn
    if u.keep == "last" and u.eval_every is None:
        return HeadlineTracker(recipe, model, tokenizer, data_dir, reference, None)
    n_forget = len(common.task_of(recipe).unlearn_sets(data_dir)[0].rows)
    tracker = HeadlineTracker(recipe, model, tokenizer, data_dir, reference,
                              step_plan(recipe, n_forget)[1], u.keep == "best")
    tracker.evaluate(0)
    return tracker
