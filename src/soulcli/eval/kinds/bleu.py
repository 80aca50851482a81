"""BLEU of greedy continuations: SOUL's leakage rate for copyright removal (Jia et al., 2024),
with ``sacrebleu`` (Post, 2018) sentence BLEU per item, divided by 100 to sit in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass

from soulcli.eval.kinds.rouge import GenerationMetric
from soulcli.eval.metric import metric_kind


def sentence_bleu(reference: str, generation: str) -> float:
    """sacrebleu's sentence BLEU (13a tokenisation, exponential smoothing) / 100."""
    from sacrebleu.metrics import BLEU

    return float(BLEU(effective_order=True).sentence_score(generation, [reference]).score) / 100.0


@metric_kind
@dataclass
class GeneratedBleu(GenerationMetric):
    """Mean sentence BLEU of the generations against the records' continuations."""

    kind = "generated_bleu"
    higher_is_better: bool | None = False

    def score(self, reference: str, generation: str) -> float:
        return sentence_bleu(reference, generation)
