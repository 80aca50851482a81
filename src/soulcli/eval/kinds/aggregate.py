"""Metrics computed from other metrics: TOFU's forget quality and model utility."""

from __future__ import annotations

from dataclasses import dataclass

from soulcli.eval import metrics as M
from soulcli.eval.metric import Metric, Unavailable, check_same_items, metric_kind, reference_entry


@metric_kind
@dataclass
class KSTest(Metric):
    """TOFU's forget quality: the KS-test p-value between the per-item values of ``of`` (the
    forget truth ratios) and the reference model's, on the same items."""

    kind = "ks_test"
    name: str
    of: str
    split: str
    description: str = ""
    higher_is_better: bool | None = True
    format: str = ".3g"  # a p-value, often tiny

    @property
    def needs(self):
        return (self.of,)

    @property
    def reference_needs(self):
        return (self.of,)

    def compute(self, plan, res, done, reference, data):
        theirs = reference_entry(reference, self.of, "per_item")
        check_same_items(reference, data, [self.split])
        ours = done[self.of]["per_item"]
        if len(theirs) != len(ours):
            raise Unavailable(f"the reference has {len(theirs)} values of {self.of} but this "
                              f"evaluation has {len(ours)}; evaluate the retain model on the same items")
        statistic, pvalue = M.ks_test(ours, theirs)
        return {"value": pvalue, "ks_statistic": statistic}


@metric_kind
@dataclass
class HarmonicMean(Metric):
    """TOFU's model utility: the harmonic mean of the ``parts`` metrics' values."""

    kind = "harmonic_mean"
    name: str
    parts: tuple[str, ...]
    description: str = ""
    higher_is_better: bool | None = True

    @property
    def needs(self):
        return self.parts

    def compute(self, plan, res, done, reference, data):
        components = {name: done[name]["value"] for name in self.parts}
        return {"value": M.harmonic_mean(list(components.values())), "components": components}
