"""ROUGE-L of greedy generations against the reference continuation.

TOFU reports the recall of the generated answer (``rouge_score``, stemmed); MUSE reports the F1
of VerbMem continuations and KnowMem answers; SOUL's copyright task the ROUGE-L of
continuations beside BLEU. One kind, the variant a field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from soulcli.eval import metrics as M
from soulcli.eval.metric import Generation, Metric, Pairing, mean, metric_kind


@dataclass
class GenerationMetric(Metric):
    """A metric of the greedy continuation of each record's prompt (at most ``max_new_tokens``
    tokens, cut at ``stops``, then passed through ``answer``) against the record's
    continuation, cut to its first ``reference_tokens`` tokens when set (MUSE's VerbMem)."""

    name: str
    split: str
    pairing: Pairing
    max_new_tokens: int
    stops: tuple[str, ...] = ()
    answer: Callable[[str], str] | None = None  # post-processing of the generated text
    description: str = ""
    higher_is_better: bool | None = None
    reference_tokens: int | None = None

    @property
    def reads(self):
        return {self.split: self.pairing.fields}

    def plan(self, data, req):
        return [req.generate(Generation(self.pairing(row), self.max_new_tokens, self.stops))
                for row in data[self.split]]

    def score(self, reference: str, generation: str) -> float:
        raise NotImplementedError

    def compute(self, plan, res, done, reference, data):
        generations, refs = generations_and_references(self, plan, res, data)
        per_item = [self.score(ref, gen) for ref, gen in zip(refs, generations)]
        return {"value": mean(per_item), "per_item": per_item, "generations": generations}


@metric_kind
@dataclass
class GeneratedRouge(GenerationMetric):
    """ROUGE-L (``variant``: recall | f1; ``stem``: Porter stemming) of the generations."""

    kind = "generated_rouge"
    variant: str = "recall"
    stem: bool = True

    def score(self, reference: str, generation: str) -> float:
        if not hasattr(self, "_rouge"):
            self._rouge = M.RougeL(self.variant, self.stem)
        return self._rouge(reference, generation)


def generations_and_references(metric, plan, res, data) -> tuple[list[str], list[str]]:
    """A generation metric's texts: its generations (post-processed by ``metric.answer``) and the
    references (cut to ``metric.reference_tokens`` tokens, BOS counted, as MUSE's VerbMem does)."""
    generations = [res.generations[i] for i in plan]
    if metric.answer is not None:
        generations = [metric.answer(g) for g in generations]
    refs = [metric.pairing.target(row) for row in data[metric.split]]
    if metric.reference_tokens is not None:
        tok = res.tokenizer
        refs = [tok.decode(tok(r)["input_ids"][: metric.reference_tokens], skip_special_tokens=True)
                for r in refs]
    return generations, refs
