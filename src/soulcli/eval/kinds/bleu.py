"""BLEU of greedy continuations: SOUL's leakage rate for copyright removal (Jia et al., 2024),
with ``sacrebleu`` (Post, 2018) sentence BLEU per item, divided by 100 to sit in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from soulcli.eval.kinds.rouge import generations_and_references
from soulcli.eval.metric import Generation, Metric, Pairing, mean, metric_kind


def sentence_bleu(reference: str, generation: str) -> float:
    """sacrebleu's sentence BLEU (13a tokenisation, exponential smoothing) / 100."""
    from sacrebleu.metrics import BLEU

    return float(BLEU(effective_order=True).sentence_score(generation, [reference]).score) / 100.0


@metric_kind
@dataclass
class GeneratedBleu(Metric):
    """Mean sentence BLEU of the greedy continuation of each record's prompt against the
    record's continuation (at most ``max_new_tokens`` tokens, cut at ``stops``)."""

    kind = "generated_bleu"
    name: str
    split: str
    pairing: Pairing
    max_new_tokens: int
    stops: tuple[str, ...] = ()
    answer: Callable[[str], str] | None = None
    description: str = ""
    higher_is_better: bool | None = False
    reference_tokens: int | None = None

    @property
    def reads(self):
        return {self.split: self.pairing.fields}

    def plan(self, data, req):
        return [req.generate(Generation(self.pairing.prompt(row), self.max_new_tokens, self.stops))
                for row in data[self.split]]

    def compute(self, plan, res, done, reference, data):
        generations, refs = generations_and_references(self, plan, res, data)
        per_item = [sentence_bleu(ref, gen) for ref, gen in zip(refs, generations)]
        return {"value": mean(per_item), "per_item": per_item, "generations": generations}
