"""Evaluation: batched scoring shared by all metrics, generation, the metrics, report and gates.

``evaluate_model`` scores every distinct (question, answer candidate) pair once and generates
every greedy answer once, then derives TOFU's, MUSE's and the membership-inference metrics
from that stored data. See :mod:`soulcli.eval.evaluate` for the flow and
:mod:`soulcli.eval.metrics` for the formulas and their sources.
"""

from soulcli.eval.config import EvalConfig
from soulcli.eval.evaluate import evaluate_model
from soulcli.eval.reference import (
    as_reference,
    load_reference,
    reference_from_result,
    save_reference,
)
from soulcli.eval.registry import METRICS, MetricInfo, resolve_metrics

__all__ = [
    "METRICS",
    "EvalConfig",
    "MetricInfo",
    "as_reference",
    "evaluate_model",
    "load_reference",
    "reference_from_result",
    "resolve_metrics",
    "save_reference",
]
