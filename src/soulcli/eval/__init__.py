"""Evaluation: metric objects, the planner that scores and generates once for all of them, the
reference values, the report and the gates.

``evaluate_model`` takes a task's suite (``soulcli.tasks``), scores every distinct
(prefix, continuation) pair once and generates every distinct prompt once, then derives every
metric from that stored data. See :mod:`soulcli.eval.evaluate` for the flow,
:mod:`soulcli.eval.metric` for what a metric declares, :mod:`soulcli.eval.kinds` for the metric
kinds and :mod:`soulcli.eval.metrics` for the formulas and their sources.
"""

from soulcli.eval.config import EvalConfig
from soulcli.eval.evaluate import evaluate_model, reference_metrics, resolve_metrics, with_dependencies
from soulcli.eval.metric import METRIC_KINDS, Metric, Unavailable
from soulcli.eval.reference import as_reference, load_reference, reference_from_result, save_reference

__all__ = [
    "METRIC_KINDS",
    "EvalConfig",
    "Metric",
    "Unavailable",
    "as_reference",
    "evaluate_model",
    "load_reference",
    "reference_from_result",
    "reference_metrics",
    "resolve_metrics",
    "save_reference",
    "with_dependencies",
]
