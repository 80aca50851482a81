"""Likelihood metrics of TOFU (Maini et al., 2024): probability and truth ratio.

Each scores a record's answer (and its candidates) teacher-forced under the record's prompt,
through the one batched pass; formulas in :mod:`soulcli.eval.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass

from soulcli.eval import metrics as M
from soulcli.eval.metric import TEXT, TEXTS, Metric, Pairing, Requests, mean, metric_kind, texts_of


def _nlls(res, indices):
    return [res.scores[i].nll for i in indices]


@metric_kind
@dataclass
class AnswerProb(Metric):
    """Mean ``exp(-NLL)`` of the answer, NLL the mean answer-token negative log-likelihood
    (TOFU's probability on the forget and retain sets)."""

    kind = "answer_prob"
    name: str
    split: str
    pairing: Pairing
    description: str = ""
    higher_is_better: bool | None = True

    @property
    def reads(self):
        return {self.split: self.pairing.fields}

    def plan(self, data, req: Requests):
        return [req.score(self.pairing(row)) for row in data[self.split]]

    def compute(self, plan, res, done, reference, data):
        per_item = [M.prob_from_nll(x) for x in _nlls(res, plan)]
        return {"value": mean(per_item), "per_item": per_item}


@metric_kind
@dataclass
class NormalizedProb(Metric):
    """Mean ``p(answer) / (p(answer) + sum_j p(wrong_j))`` with ``p = exp(-NLL)`` (TOFU's
    probability on the real-authors and world-facts sets)."""

    kind = "normalized_prob"
    name: str
    split: str
    pairing: Pairing
    wrong: str  # the field of the wrong candidates
    description: str = ""
    higher_is_better: bool | None = True

    @property
    def reads(self):
        return {self.split: {**self.pairing.fields, self.wrong: TEXTS}}

    def plan(self, data, req):
        rows = data[self.split]
        true = [req.score(self.pairing(row)) for row in rows]
        wrong = [[req.score(self.pairing(row, a)) for a in texts_of(row[self.wrong])] for row in rows]
        return true, wrong

    def compute(self, plan, res, done, reference, data):
        true, wrong = plan
        per_item = [M.normalized_prob(t, _nlls(res, w)) for t, w in zip(_nlls(res, true), wrong)]
        return {"value": mean(per_item), "per_item": per_item}


@metric_kind
@dataclass
class TruthRatio(Metric):
    """TOFU's truth ratio per item, ``exp(-mean_j NLL(wrong_j)) / exp(-NLL(true))``, with the
    true answer in ``true`` (the paraphrase on forget/retain, the answer elsewhere). Aggregate
    ``forget``: ``mean(min(TR, 1/TR))``; ``other``: ``mean(max(0, 1 - TR))``."""

    kind = "truth_ratio"
    name: str
    split: str
    pairing: Pairing
    true: str
    wrong: str
    aggregate: str = "other"  # forget | other
    description: str = ""
    higher_is_better: bool | None = True

    @property
    def reads(self):
        return {self.split: {**self.pairing.fields, self.true: TEXT, self.wrong: TEXTS}}

    def plan(self, data, req):
        rows = data[self.split]
        true = [req.score(self.pairing(row, row[self.true])) for row in rows]
        wrong = [[req.score(self.pairing(row, a)) for a in texts_of(row[self.wrong])] for row in rows]
        return true, wrong

    def compute(self, plan, res, done, reference, data):
        true, wrong = plan
        per_item = [M.truth_ratio(t, _nlls(res, w)) for t, w in zip(_nlls(res, true), wrong)]
        if self.aggregate == "forget":
            return {"value": M.forget_truth_ratio_score(per_item), "per_item": per_item,
                    "aggregate": "mean(min(TR, 1/TR))"}
        return {"value": M.truth_ratio_score(per_item), "per_item": per_item,
                "aggregate": "mean(max(0, 1 - TR))"}
