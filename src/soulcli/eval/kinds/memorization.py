"""Per-token memorisation of the forget answers (as OpenUnlearning collects them): extraction
strength (after Carlini et al., 2021/2023) and exact memorisation (Tirumala et al., 2022), over
the answer's own tokens: an appended EOS is left out, as open-unlearning's
``src/evals/metrics/memorization.py`` scores them (through ``tokenwise_vocab_logprobs``)."""

from __future__ import annotations

from dataclasses import dataclass

from soulcli.eval import metrics as M
from soulcli.eval.metric import Metric, Pairing, mean, metric_kind


@dataclass
class _PerToken(Metric):
    name: str
    split: str
    pairing: Pairing
    description: str = ""
    higher_is_better: bool | None = False

    @property
    def reads(self):
        return {self.split: self.pairing.fields}

    def plan(self, data, req):
        return [req.score(self.pairing(row)) for row in data[self.split]]

    def compute(self, plan, res, done, reference, data):
        per_item = [self.formula(res.scores[i].hits[res.scores[i].content]) for i in plan]
        return {"value": mean(per_item), "per_item": per_item}


@metric_kind
@dataclass
class ExtractionStrength(_PerToken):
    """Mean ``1 - k*/|y|`` (:func:`soulcli.eval.metrics.extraction_strength`)."""

    kind = "extraction_strength"
    formula = staticmethod(M.extraction_strength)


@metric_kind
@dataclass
class ExactMemorization(_PerToken):
    """Mean teacher-forced argmax accuracy on the answer tokens (:func:`soulcli.eval.metrics.exact_memorization`)."""

    kind = "exact_memorization"
    formula = staticmethod(M.exact_memorization)
