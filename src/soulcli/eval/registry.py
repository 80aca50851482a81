"""The metric registry: every metric's name, meaning and what it needs from the data.

``METRICS`` maps each name written to eval.json to a :class:`MetricInfo`. ``data`` says which
answers of which split must be scored (or generated) for it, so an evaluation that selects a
few metrics scores and generates only what those need.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Iterable

from soulcli.errors import UserError, unknown_name

SPLITS = ("forget", "retain", "real_authors", "world_facts", "holdout")
QA_SPLITS = ("forget", "retain", "real_authors", "world_facts")
UTILITY_SPLITS = ("retain", "real_authors", "world_facts")
# Min-K%, the attack MUSE reports PrivLeak with, comes first.
ATTACKS = ("mink", "loss", "zlib", "minkpp")

# Parts of a split's rows: an answer field to score, or "generate" (a greedy answer to the
# question), or "stats" (Min-K%++ distribution statistics on the scored `answer`).
ANSWER, PARAPHRASED, PERTURBED, GENERATE, STATS = (
    "answer",
    "paraphrased_answer",
    "perturbed_answer",
    "generate",
    "stats",
)


@dataclass(frozen=True)
class MetricInfo:
    name: str
    kind: str
    description: str
    split: str | None = None
    attack: str | None = None
    data: dict[str, frozenset[str]] = field(default_factory=dict)
    needs: tuple[str, ...] = ()  # metrics it is computed from
    reference: bool = False  # needs the retain model's reference values


def true_answer_field(split: str) -> str:
    """TOFU compares perturbed answers with the paraphrase on forget/retain, the answer elsewhere."""
    return PARAPHRASED if split in ("forget", "retain") else ANSWER


def _split_metrics(split: str) -> list[MetricInfo]:
    label = split.replace("_", " ")
    prob_parts = {ANSWER} if split in ("forget", "retain") else {ANSWER, PERTURBED}
    prob_desc = (
        "mean exp(-answer NLL)"
        if split in ("forget", "retain")
        else "mean p(answer) / (p(answer) + sum p(perturbed))"
    )
    tr_desc = "mean min(TR, 1/TR)" if split == "forget" else "mean max(0, 1 - TR)"
    return [
        MetricInfo(
            f"{split}_prob",
            "prob",
            f"{label}: {prob_desc}",
            split,
            data={split: frozenset(prob_parts)},
        ),
        MetricInfo(
            f"{split}_truth_ratio",
            "truth_ratio",
            f"{label}: truth ratio, {tr_desc}",
            split,
            data={split: frozenset({true_answer_field(split), PERTURBED})},
        ),
        MetricInfo(
            f"{split}_rougeL_recall",
            "rougeL_recall",
            f"{label}: ROUGE-L recall of the greedy answer",
            split,
            data={split: frozenset({GENERATE})},
        ),
    ]


def _build() -> dict[str, MetricInfo]:
    infos: list[MetricInfo] = [m for split in QA_SPLITS for m in _split_metrics(split)]
    infos.append(
        MetricInfo(
            "forget_quality",
            "forget_quality",
            "KS-test p-value, forget truth ratios vs the retain model's",
            needs=("forget_truth_ratio",),
            reference=True,
        )
    )
    infos.append(
        MetricInfo(
            "model_utility",
            "model_utility",
            "harmonic mean of prob, ROUGE-L and truth ratio on retain, real authors, world facts",
            needs=tuple(
                f"{split}_{m}"
                for split in UTILITY_SPLITS
                for m in ("prob", "rougeL_recall", "truth_ratio")
            ),
        )
    )
    attack_desc = {
        "loss": "LOSS",
        "zlib": "ZLib",
        "mink": "Min-K%",
        "minkpp": "Min-K%++",
    }
    for attack in ("loss", "zlib", "mink", "minkpp"):
        parts = frozenset({ANSWER, STATS} if attack == "minkpp" else {ANSWER})
        infos.append(
            MetricInfo(
                f"mia_{attack}_auc",
                "mia",
                f"{attack_desc[attack]} membership AUC, forget (members) vs holdout",
                attack=attack,
                data={"forget": parts, "holdout": parts},
            )
        )
    infos.append(
        MetricInfo(
            "privleak",
            "privleak",
            "MUSE PrivLeak (%) of the Min-K% AUC relative to the retain model's",
            needs=("mia_mink_auc",),
            reference=True,
        )
    )
    for name, desc in (
        (
            "extraction_strength",
            "forget: 1 - k*/|y|, shortest prefix after which the rest is recovered",
        ),
        ("exact_memorization", "forget: teacher-forced argmax accuracy on answer tokens"),
    ):
        infos.append(MetricInfo(name, name, desc, data={"forget": frozenset({ANSWER})}))
    return {m.name: m for m in infos}


METRICS: dict[str, MetricInfo] = _build()


def resolve_metrics(selection: Iterable[str] | None) -> tuple[str, ...]:
    """Names selected by ``selection`` (exact names or glob patterns like ``retain_*``), in
    registry order; ``None`` selects every metric."""
    if selection is None:
        return tuple(METRICS)
    chosen: set[str] = set()
    for pattern in selection:
        matches = [name for name in METRICS if fnmatch.fnmatchcase(name, pattern)]
        if not matches:
            raise unknown_name("metric", pattern, METRICS)
        chosen.update(matches)
    if not chosen:
        raise UserError(
            "the metrics selection is empty; name at least one metric or leave it unset"
        )
    return tuple(name for name in METRICS if name in chosen)


def with_dependencies(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` plus every metric they are computed from, in registry order (dependencies first)."""
    needed: set[str] = set()
    stack = list(names)
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack.extend(METRICS[name].needs)
    return tuple(name for name in METRICS if name in needed)
