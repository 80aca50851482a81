"""Evaluate a model on the unlearning benchmark: score once, generate once, derive every metric.

The order of work, top to bottom:

1. Resolve the metric selection and add what the chosen metrics are computed from.
2. Check which splits and fields exist; a metric that lacks its data (or its reference) is
   reported as unavailable with the reason, never dropped.
3. Collect every distinct (question, answer candidate) pair the metrics need and score them in
   one sorted, batched pass (:func:`soulcli.eval.scoring.score_pairs`); collect every question
   that needs a greedy answer and generate them in one batched pass.
4. Compute each metric from the stored per-token data (:mod:`soulcli.eval.metrics`).

Definitions follow TOFU's evaluation code (Maini et al., 2024); PrivLeak follows MUSE (Shi et
al., 2024); the membership attacks and memorisation metrics are cited in
:mod:`soulcli.eval.metrics`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from soulcli.data.template import PromptTemplate
from soulcli.errors import UserError, unknown_name
from soulcli.eval import metrics as M
from soulcli.eval.generation import generate_answers
from soulcli.eval.reference import as_reference, fingerprint
from soulcli.eval.registry import (
    ANSWER,
    ATTACKS,
    GENERATE,
    METRICS,
    PARAPHRASED,
    PERTURBED,
    SPLITS,
    STATS,
    MetricInfo,
    resolve_metrics,
    true_answer_field,
    with_dependencies,
)
from soulcli.eval.config import EvalConfig
from soulcli.eval.scoring import Progress, TokenScores, score_pairs

NO_REFERENCE = (
    "no reference given: pass the retain model's eval.json (or a reference file) as the reference"
)


class _Unavailable(Exception):
    """Raised by a metric that cannot be computed; the message is the reason reported."""


class _Split:
    """One split's rows as parallel columns; an unusable field value is ``None``."""

    def __init__(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        self.name = name
        self.rows = list(rows)
        self.columns: dict[str, list[Any]] = {
            field: [self._value(row, field) for row in self.rows]
            for field in ("question", ANSWER, PARAPHRASED, PERTURBED)
        }

    @staticmethod
    def _value(row: Mapping[str, Any], field: str) -> Any:
        value = row.get(field) if isinstance(row, Mapping) else None
        if field == PERTURBED:
            if isinstance(value, str):
                value = [value]
            if (
                isinstance(value, (list, tuple))
                and value
                and all(isinstance(v, str) for v in value)
            ):
                return list(value)
            return None
        return value if isinstance(value, str) else None

    def problem(self, fields: set[str]) -> str | None:
        for field in ("question", ANSWER, PARAPHRASED, PERTURBED):
            if field in fields and None in self.columns[field]:
                row = self.columns[field].index(None)
                kind = "a non-empty list of strings" if field == PERTURBED else "a string"
                return f"split '{self.name}' row {row} has no '{field}' ({kind})"
        return None


def _fields_for(parts: frozenset[str]) -> set[str]:
    fields = {"question"}
    if parts & {ANSWER, GENERATE, STATS}:
        fields.add(ANSWER)
    return fields | (parts & {PARAPHRASED, PERTURBED})


class _Pairs:
    """Distinct (question, answer) pairs to score, each once, with the Min-K%++ flag."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []
        self.stats: list[bool] = []
        self._index: dict[tuple[str, str], int] = {}

    def add(self, question: str, answer: str, stats: bool = False) -> int:
        key = (question, answer)
        i = self._index.get(key)
        if i is None:
            i = self._index[key] = len(self.pairs)
            self.pairs.append(key)
            self.stats.append(stats)
        self.stats[i] = self.stats[i] or stats
        return i


class _Context:
    """What the metric functions read: the splits, the scores and the generations."""

    def __init__(self, splits: dict[str, _Split], cfg: EvalConfig, reference: dict | None) -> None:
        self.splits = splits
        self.cfg = cfg
        self.reference = reference
        self.index: dict[tuple[str, str], list[Any]] = {}
        self.scores: list[TokenScores] = []
        self.generations: dict[str, list[str]] = {}
        self._rouge: M.RougeLRecall | None = None

    def request(self, parts: Mapping[str, set[str]]) -> tuple[_Pairs, dict[str, int]]:
        """The distinct pairs to score and questions to answer for ``parts`` (split -> parts);
        records where each split's items sit in them."""
        pairs = _Pairs()
        to_generate: dict[str, int] = {}
        for split, wanted in parts.items():
            cols = self.splits[split].columns
            questions = cols["question"]
            for field in (ANSWER, PARAPHRASED):
                if field in wanted:
                    stats = field == ANSWER and STATS in wanted
                    self.index[(split, field)] = [
                        pairs.add(q, a, stats) for q, a in zip(questions, cols[field])
                    ]
            if PERTURBED in wanted:
                self.index[(split, PERTURBED)] = [
                    [pairs.add(q, a) for a in row] for q, row in zip(questions, cols[PERTURBED])
                ]
            if GENERATE in wanted:
                for q in questions:
                    to_generate.setdefault(q, len(to_generate))
        return pairs, to_generate

    def answer_scores(self, split: str, field: str = ANSWER) -> list[TokenScores]:
        return [self.scores[i] for i in self.index[(split, field)]]

    def nll(self, split: str, field: str) -> list[float]:
        return [s.nll for s in self.answer_scores(split, field)]

    def perturbed_nll(self, split: str) -> list[list[float]]:
        return [[self.scores[i].nll for i in row] for row in self.index[(split, PERTURBED)]]

    @property
    def rouge(self) -> M.RougeLRecall:
        if self._rouge is None:
            self._rouge = M.RougeLRecall()
        return self._rouge

    def check_fingerprints(self, splits: Sequence[str]) -> None:
        """Refuse a reference computed on other items than this evaluation's."""
        stored = (self.reference or {}).get("fingerprints") or {}
        for split in splits:
            ours = fingerprint(self.splits[split].rows)
            if split in stored and stored[split] != ours:
                raise _Unavailable(
                    f"the reference was computed on a different '{split}' split; "
                    "evaluate the retain model on the same data"
                )


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def _prob(ctx: _Context, info: MetricInfo, done: dict) -> dict:
    split = info.split
    true = ctx.nll(split, ANSWER)
    if split in ("forget", "retain"):
        per_item = [M.prob_from_nll(x) for x in true]
    else:
        per_item = [M.normalized_prob(t, p) for t, p in zip(true, ctx.perturbed_nll(split))]
    return {"value": _mean(per_item), "per_item": per_item}


def _truth_ratio(ctx: _Context, info: MetricInfo, done: dict) -> dict:
    split = info.split
    true = ctx.nll(split, true_answer_field(split))
    per_item = [M.truth_ratio(t, p) for t, p in zip(true, ctx.perturbed_nll(split))]
    if split == "forget":
        value, aggregate = M.forget_truth_ratio_score(per_item), "mean(min(TR, 1/TR))"
    else:
        value, aggregate = M.truth_ratio_score(per_item), "mean(max(0, 1 - TR))"
    return {"value": value, "per_item": per_item, "aggregate": aggregate}


def _rouge(ctx: _Context, info: MetricInfo, done: dict) -> dict:
    split = info.split
    answers = ctx.splits[split].columns[ANSWER]
    generations = ctx.generations[split]
    per_item = [ctx.rouge(ref, gen) for ref, gen in zip(answers, generations)]
    return {"value": _mean(per_item), "per_item": per_item, "generations": generations}


def _forget_quality(ctx: _Context, info: MetricInfo, done: dict) -> dict:
    reference = ctx.reference.get("forget_truth_ratio")
    if not reference:
        raise _Unavailable(
            "the reference has no forget truth ratios; evaluate the retain model with forget_truth_ratio"
        )
    ctx.check_fingerprints(["forget"])
    ratios = done["forget_truth_ratio"]["per_item"]
    if len(reference) != len(ratios):
        raise _Unavailable(
            f"the reference has {len(reference)} forget truth ratios but the forget split has "
            f"{len(ratios)} items; evaluate the retain model on the same forget split"
        )
    statistic, pvalue = M.ks_test(ratios, reference)
    return {"value": pvalue, "ks_statistic": statistic}


def _model_utility(ctx: _Context, info: MetricInfo, done: dict) -> dict:
    components = {name: done[name]["value"] for name in info.needs}
    return {"value": M.harmonic_mean(list(components.values())), "components": components}


def _member_scores(ctx: _Context, split: str, attack: str) -> list[float]:
    k = ctx.cfg.mink_k
    scores = ctx.answer_scores(split)
    if attack == "loss":
        return [M.loss_score(s.logprobs) for s in scores]
    if attack == "zlib":
        texts = ctx.splits[split].columns[ANSWER]
        return [M.zlib_score(s.logprobs, t) for s, t in zip(scores, texts)]
    if attack == "mink":
        return [M.mink_score(s.logprobs, k) for s in scores]
    return [M.minkpp_score(s.logprobs, s.mu, s.sigma, k) for s in scores]


def _mia(ctx: _Context, info: MetricInfo, done: dict) -> dict:
    members = _member_scores(ctx, "forget", info.attack)
    nonmembers = _member_scores(ctx, "holdout", info.attack)
    return {
        "value": M.auc(members, nonmembers),
        "scores": {"forget": members, "holdout": nonmembers},
        "orientation": "higher score = member; AUC = P(forget item scores above holdout item)",
    }


def _privleak(ctx: _Context, info: MetricInfo, done: dict) -> dict:
    ref_aucs = ctx.reference.get("mia_auc") or {}
    if "mink" not in ref_aucs:
        raise _Unavailable(
            "the reference has no Min-K% AUC; evaluate the retain model with mia_mink_auc"
        )
    ctx.check_fingerprints(["forget", "holdout"])
    by_attack = {}
    for attack in ATTACKS:
        entry = done.get(f"mia_{attack}_auc") or {}
        if entry.get("value") is not None and attack in ref_aucs:
            try:
                by_attack[attack] = M.privleak(entry["value"], ref_aucs[attack])
            except ValueError:
                by_attack[attack] = None
    if by_attack["mink"] is None:
        raise _Unavailable(
            "the reference Min-K% AUC is 1, so PrivLeak is undefined (division by zero)"
        )
    return {
        "value": by_attack["mink"],
        "attack": "mink",
        "auc": done["mia_mink_auc"]["value"],
        "reference_auc": float(ref_aucs["mink"]),
        "by_attack": by_attack,
    }


def _per_token(fn: Callable[[np.ndarray], float]) -> Callable[[_Context, MetricInfo, dict], dict]:
    def compute(ctx: _Context, info: MetricInfo, done: dict) -> dict:
        per_item = [fn(s.hits) for s in ctx.answer_scores("forget")]
        return {"value": _mean(per_item), "per_item": per_item}

    return compute


_COMPUTE: dict[str, Callable[[_Context, MetricInfo, dict], dict]] = {
    "prob": _prob,
    "truth_ratio": _truth_ratio,
    "rougeL_recall": _rouge,
    "forget_quality": _forget_quality,
    "model_utility": _model_utility,
    "mia": _mia,
    "privleak": _privleak,
    "extraction_strength": _per_token(M.extraction_strength),
    "exact_memorization": _per_token(M.exact_memorization),
}


def _splits_given(splits: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, _Split]:
    for name in splits:
        if name not in SPLITS:
            raise unknown_name("evaluation split", name, SPLITS)
    return {name: _Split(name, rows) for name, rows in splits.items() if rows}


def _data_problem(info: MetricInfo, splits: dict[str, _Split]) -> str | None:
    for split, parts in info.data.items():
        if split not in splits:
            return f"no '{split}' split given"
        problem = splits[split].problem(_fields_for(parts))
        if problem:
            return problem
    return None


def _dependency_problem(info: MetricInfo, unavailable: dict[str, str]) -> str | None:
    missing = [name for name in info.needs if name in unavailable]
    if missing:
        return f"needs {missing[0]}, which is unavailable: {unavailable[missing[0]]}"
    return None


def evaluate_model(
    model: torch.nn.Module,
    tokenizer,
    template: PromptTemplate,
    splits: Mapping[str, Sequence[Mapping[str, Any]]],
    cfg: EvalConfig | None = None,
    reference: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Compute the selected metrics of ``model`` on ``splits``.

    ``splits`` maps ``forget``, ``retain``, ``real_authors``, ``world_facts`` and ``holdout`` to
    rows (TOFU fields); a missing split makes the metrics that read it unavailable.
    ``reference`` is the retain model's reference (or its whole result); without it
    ``forget_quality`` and ``privleak`` are unavailable. ``progress(stage, done, total)`` is
    called with ``done=0`` as a stage ("scoring", "generating") starts and after each batch.

    Returns ``{"metrics": {name: {"value": ..., ...}}, "eval_config", "splits", "stats"}``;
    an unavailable metric has ``"value": None`` and ``"unavailable": reason``.
    """
    cfg = cfg or EvalConfig()
    started = time.perf_counter()
    selected = resolve_metrics(cfg.metrics)
    needed = with_dependencies(selected)
    data = _splits_given(splits)
    ctx = _Context(data, cfg, as_reference(reference) if reference is not None else None)

    unavailable: dict[str, str] = {}
    parts: dict[str, set[str]] = {}
    for name in needed:
        info = METRICS[name]
        problem = _data_problem(info, data)
        if problem:
            unavailable[name] = problem
            continue
        for split, wanted in info.data.items():
            parts.setdefault(split, set()).update(wanted)

    pairs, to_generate = ctx.request(parts)
    ctx.scores = score_pairs(
        model,
        tokenizer,
        template,
        pairs.pairs,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length or 512,
        with_stats=pairs.stats,
        progress=progress,
    )
    scored_at = time.perf_counter()
    answers = generate_answers(
        model,
        tokenizer,
        template,
        list(to_generate),
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
        progress=progress,
    )
    generated_at = time.perf_counter()
    for split, wanted in parts.items():
        if GENERATE in wanted:
            ctx.generations[split] = [
                answers[to_generate[q]] for q in data[split].columns["question"]
            ]

    done: dict[str, dict] = {}
    for name in needed:
        info = METRICS[name]
        problem = unavailable.get(name) or _dependency_problem(info, unavailable)
        if not problem and info.reference and ctx.reference is None:
            problem = NO_REFERENCE
        if problem:
            unavailable[name] = problem
            done[name] = {"value": None, "unavailable": problem}
            continue
        try:
            done[name] = _COMPUTE[info.kind](ctx, info, done)
        except _Unavailable as exc:
            unavailable[name] = str(exc)
            done[name] = {"value": None, "unavailable": str(exc)}

    return {
        "metrics": {name: done[name] for name in selected},
        "eval_config": {
            **asdict(cfg),
            "metrics": list(cfg.metrics) if cfg.metrics is not None else None,
        },
        "splits": {
            name: {"items": len(s.rows), "fingerprint": fingerprint(s.rows)}
            for name, s in data.items()
        },
        "stats": {
            "pairs_scored": len(pairs.pairs),
            "score_batches": math.ceil(len(pairs.pairs) / cfg.batch_size),
            "answers_generated": len(to_generate),
            "seconds_scoring": scored_at - started,
            "seconds_generating": generated_at - scored_at,
            "seconds_total": time.perf_counter() - started,
        },
    }
