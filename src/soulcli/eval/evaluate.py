"""Evaluate a model on a task's metric suite: score once, generate once, derive every metric.

The order of work, top to bottom:

1. Resolve the metric selection (names or glob patterns) in the suite and add what the chosen
   metrics are computed from.
2. Check that each metric's splits and fields exist; one that lacks its data (or, later, its
   reference) is reported as unavailable with the reason, never dropped.
3. Let every metric register its requests (:class:`soulcli.eval.metric.Requests`): each distinct
   (prefix, continuation) pair is scored in sorted batches, a prompt its answer candidates
   share going through the model once per batch (:func:`soulcli.eval.scoring.score_pairs`),
   each distinct prompt generated once per token budget
   (:func:`soulcli.eval.generation.generate_texts`).
4. Compute each metric from the stored per-token data, dependencies first.

The suite, the splits and their meaning are the task's (:mod:`soulcli.tasks`); nothing here
knows a benchmark.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import asdict
from typing import Any, Iterable, Mapping, Sequence

import torch

from soulcli.errors import UserError, unknown_name
from soulcli.eval.config import EvalConfig
from soulcli.eval.generation import generate_texts
from soulcli.eval.metric import TEXTS, Metric, Requests, Results, Unavailable, fingerprint
from soulcli.eval.reference import as_reference
from soulcli.eval.scoring import Progress, model_device, score_pairs

Suite = Mapping[str, Metric]

NO_REFERENCE = (
    "no reference given: pass the retain model's eval.json (or a reference file) as the reference"
)


def resolve_metrics(suite: Suite, selection: Iterable[str] | None) -> tuple[str, ...]:
    """Names selected by ``selection`` (exact names or glob patterns like ``retain_*``), in
    suite order; ``None`` selects every metric."""
    if selection is None:
        return tuple(suite)
    chosen: set[str] = set()
    for pattern in selection:
        matches = [name for name in suite if fnmatch.fnmatchcase(name, pattern)]
        if not matches:
            raise unknown_name("metric", pattern, suite)
        chosen.update(matches)
    if not chosen:
        raise UserError("the metrics selection is empty; name at least one metric or leave it unset")
    return tuple(name for name in suite if name in chosen)


def with_dependencies(suite: Suite, names: Iterable[str]) -> tuple[str, ...]:
    """``names`` plus every metric they are computed from, in suite order (dependencies first)."""
    needed: set[str] = set()
    stack = list(names)
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack.extend(suite[name].needs)
    return tuple(name for name in suite if name in needed)


def reference_metrics(suite: Suite) -> tuple[str, ...]:
    """The metrics a reference model must be evaluated with for this suite (and their inputs)."""
    return with_dependencies(suite, [n for m in suite.values() for n in m.reference_needs])


def _field_problem(split: str, rows: Sequence[Mapping[str, Any]], field: str, kind: str) -> str | None:
    for i, row in enumerate(rows):
        value = row.get(field) if isinstance(row, Mapping) else None
        ok = isinstance(value, str)
        if kind == TEXTS:
            ok = ok or (isinstance(value, (list, tuple)) and bool(value)
                        and all(isinstance(v, str) for v in value))
        if not ok:
            what = "a non-empty list of strings" if kind == TEXTS else "a string"
            return f"split '{split}' row {i} has no '{field}' ({what})"
    return None


def _data_problem(metric: Metric, data: Mapping[str, Sequence]) -> str | None:
    for split, fields in metric.reads.items():
        if split not in data:
            return f"no '{split}' split given"
        for field, kind in fields.items():
            problem = _field_problem(split, data[split], field, kind)
            if problem:
                return problem
    return None


def _generate(model, tokenizer, req: Requests, cfg: EvalConfig, progress) -> list[str]:
    """Every requested generation, one batched pass per (token budget, stop strings)."""
    out = [""] * len(req.generations)
    groups: dict[tuple, list[int]] = {}
    for i, g in enumerate(req.generations):
        groups.setdefault((g.max_new_tokens, g.stops), []).append(i)
    for (budget, stops), indices in groups.items():
        texts = generate_texts(model, tokenizer, [req.generations[i].prompt for i in indices],
                               batch_size=cfg.generate_batch_size or cfg.batch_size, max_new_tokens=budget,
                               stop_strings=stops,
                               progress=progress)
        for i, text in zip(indices, texts):
            out[i] = text
    return out


def evaluate_model(
    model: torch.nn.Module,
    tokenizer,
    suite: Suite,
    splits: Mapping[str, Sequence[Mapping[str, Any]]],
    cfg: EvalConfig | None = None,
    reference: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Compute the selected metrics of ``suite`` for ``model`` on ``splits`` (name -> records).

    A split a metric reads but ``splits`` lacks makes that metric unavailable. ``reference`` is
    the retain / retrain model's reference (or its whole eval.json); without it the metrics
    that compare with it are unavailable. ``progress(stage, done, total)`` is called with
    ``done=0`` as a stage ("scoring", "generating") starts and after each batch.

    With ``cfg.max_items`` each split is cut to its first N records; ``splits`` then records
    each one's ``items`` evaluated ``of`` those given, and ``limited`` is true, so a quick
    check is never read as a full evaluation.

    Returns ``{"metrics": {name: {"value": ..., ...}}, "eval_config", "splits", "limited",
    "stats"}``; an unavailable metric has ``"value": None`` and ``"unavailable": reason``.
    """
    cfg = cfg or EvalConfig()
    started = time.perf_counter()
    selected = resolve_metrics(suite, cfg.metrics)
    needed = with_dependencies(suite, selected)
    known = {split for m in suite.values() for split in m.reads}
    for name in splits:
        if name not in known:
            raise unknown_name("evaluation split", name, known)
    given = {name: len(rows) for name, rows in splits.items() if rows}
    data = {name: list(rows)[:cfg.max_items] for name, rows in splits.items() if rows}
    ref = as_reference(reference) if reference is not None else None

    unavailable: dict[str, str] = {}
    plans: dict[str, Any] = {}
    req = Requests()
    for name in needed:
        metric = suite[name]
        problem = _data_problem(metric, data)
        if problem:
            unavailable[name] = problem
            continue
        try:
            plans[name] = metric.plan(data, req)
        except Unavailable as exc:
            unavailable[name] = str(exc)

    scored = score_pairs(model, tokenizer, req.pairs, batch_size=cfg.batch_size,
                         max_length=cfg.max_length or 512, with_stats=req.stats, progress=progress)
    scores = scored.scores
    scored_at = time.perf_counter()
    res = Results(scores, _generate(model, tokenizer, req, cfg, progress), tokenizer, model_device(model))
    generated_at = time.perf_counter()

    done: dict[str, dict] = {}
    for name in needed:
        metric = suite[name]
        problem = unavailable.get(name)
        missing = [n for n in metric.needs if n in unavailable]
        if not problem and missing:
            problem = f"needs {missing[0]}, which is unavailable: {unavailable[missing[0]]}"
        if not problem and metric.reference_needs and ref is None:
            problem = NO_REFERENCE
        if not problem:
            try:
                done[name] = metric.compute(plans.get(name), res, done, ref, data)
                continue
            except Unavailable as exc:
                problem = str(exc)
        unavailable[name] = problem
        done[name] = {"value": None, "unavailable": problem}

    return {
        "metrics": {name: done[name] for name in selected},
        "eval_config": {**asdict(cfg), "metrics": list(cfg.metrics) if cfg.metrics is not None else None},
        "splits": {name: {"items": len(rows), "of": given[name], "fingerprint": fingerprint(rows)}
                   for name, rows in data.items()},
        "limited": any(len(rows) < given[name] for name, rows in data.items()),
        "stats": {
            "pairs_scored": len(req.pairs),
            "pairs_truncated": sum(s.truncated for s in scores),  # cut by max_length
            "tokens_scored": scored.tokens,  # positions pushed through the model, padding included
            "score_passes": scored.passes,
            "scored_logits": scored.logits,  # "answer positions", or "full: <why>"
            "answers_generated": len(req.generations),
            "seconds_scoring": scored_at - started,
            "seconds_generating": generated_at - scored_at,
            "seconds_total": time.perf_counter() - started,
        },
    }
