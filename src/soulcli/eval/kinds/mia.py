"""Membership inference (members = the forget set, non-members = held-out items of the same
distribution) and MUSE's PrivLeak (Shi et al., 2024) relative to the retrain model.

Scores are oriented "higher = member": LOSS (Yeom et al., 2018), ZLib (Carlini et al., 2021),
Min-K% (Shi et al., 2024), Min-K%++ (Zhang et al., 2024); formulas in
:mod:`soulcli.eval.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass

from soulcli.eval import metrics as M
from soulcli.eval.metric import Metric, Pairing, Unavailable, check_same_items, metric_kind, reference_entry

ATTACKS = ("mink", "loss", "zlib", "minkpp")  # Min-K%, the attack MUSE reports PrivLeak with, first
ATTACK_NAMES = {"loss": "LOSS", "zlib": "ZLib", "mink": "Min-K%", "minkpp": "Min-K%++"}


@metric_kind
@dataclass
class MembershipAUC(Metric):
    """ROC AUC of telling ``members`` from ``nonmembers`` rows with one attack's score."""

    kind = "membership_auc"
    name: str
    attack: str
    members: str
    nonmembers: str
    pairing: Pairing
    k: float = 0.4  # Min-K% / Min-K%++: the fraction of lowest-scoring tokens averaged
    description: str = ""

    @property
    def reads(self):
        return {self.members: self.pairing.fields, self.nonmembers: self.pairing.fields}

    def plan(self, data, req):
        stats = self.attack == "minkpp"
        return {split: [req.score(self.pairing(row), stats) for row in data[split]]
                for split in (self.members, self.nonmembers)}

    def _score(self, s, text: str) -> float:
        if self.attack == "loss":
            return M.loss_score(s.logprobs)
        if self.attack == "zlib":
            return M.zlib_score(s.logprobs, text)
        own = s.content  # Min-K% and Min-K%++ leave an appended EOS out, as open-unlearning
        if self.attack == "mink":
            return M.mink_score(s.logprobs[own], self.k)
        return M.minkpp_score(s.logprobs[own], s.mu[own], s.sigma[own], self.k)

    def compute(self, plan, res, done, reference, data):
        scores = {split: [self._score(res.scores[i], self.pairing.target(row))
                          for i, row in zip(plan[split], data[split])] for split in plan}
        return {"value": M.auc(scores[self.members], scores[self.nonmembers]), "scores": scores,
                "orientation": f"higher score = member; AUC = P({self.members} item scores above "
                               f"{self.nonmembers} item)"}


@metric_kind
@dataclass
class PrivLeak(Metric):
    """MUSE's PrivLeak (%) of a membership AUC against the reference model's AUC on the same
    items. ``aucs`` pairs attack names with :class:`MembershipAUC` metric names; the first is the
    headline value (Min-K%, as MUSE), every one computed is reported in ``by_attack``."""

    kind = "privleak"
    name: str
    aucs: tuple[tuple[str, str], ...]
    splits: tuple[str, ...]
    description: str = ""
    higher_is_better: bool | None = None  # 0 is best (the retrain model's value)
    format: str = "+.2f%"

    @property
    def needs(self):
        return (self.aucs[0][1],)

    @property
    def reference_needs(self):
        return (self.aucs[0][1],)

    def compute(self, plan, res, done, reference, data):
        attack, primary = self.aucs[0]
        ref_auc = reference_entry(reference, primary)
        check_same_items(reference, data, self.splits)
        by_attack = {}
        for label, name in self.aucs:
            ours = (done.get(name) or {}).get("value")
            theirs = ((reference.get("metrics") or {}).get(name) or {}).get("value")
            if ours is not None and theirs is not None:
                try:
                    by_attack[label] = M.privleak(ours, theirs)
                except ValueError:
                    by_attack[label] = None
        if by_attack[attack] is None:
            raise Unavailable(f"the reference {ATTACK_NAMES.get(attack, attack)} AUC is 1, so PrivLeak "
                              "is undefined (division by zero)")
        return {"value": by_attack[attack], "attack": attack, "auc": done[primary]["value"],
                "reference_auc": float(ref_auc), "by_attack": by_attack}
