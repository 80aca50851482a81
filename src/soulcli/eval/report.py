"""The evaluation summary table and the CI gates.

Gates: ``--fail-under model_utility=0.5`` fails when the metric is below 0.5,
``--fail-over forget_rougeL_recall=0.3`` when it is above 0.3 (both repeatable). A gate on a
metric that is unavailable, was not computed, or is not a finite number (NaN compares false
with everything) fails too: a gate must never pass by default.
The CLI exits with :data:`soulcli.errors.GATE_FAILED_EXIT` (3) when any gate fails, printing
:func:`check_gates`' messages.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from rich.console import Console
from rich.table import Table

from soulcli.errors import UserError, unknown_name
from soulcli.eval.metric import Metric

Gate = tuple[str, float]
Suite = Mapping[str, Metric]


def format_value(name: str, value: float | None, suite: Suite | None = None) -> str:
    """The value as the metric prints it (a p-value in 3 significant digits, a percentage...)."""
    if value is None:
        return "n/a"
    metric = (suite or {}).get(name)
    return metric.formatted(value) if metric is not None else f"{value:.4f}"


def render_summary(result: Mapping[str, Any], console: Console, suite: Suite | None = None) -> None:
    """Print one row per metric: value, and the description or the reason it is unavailable."""
    table = Table(title="Evaluation", show_lines=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_column("about")
    metrics = result.get("metrics", {})
    for name, entry in metrics.items():
        value = entry.get("value")
        if value is None:
            table.add_row(
                name,
                "[yellow]n/a[/yellow]",
                f"[yellow]unavailable: {entry.get('unavailable', '')}[/yellow]",
            )
        else:
            metric = (suite or {}).get(name)
            table.add_row(name, format_value(name, value, suite), metric.description if metric else "")
    splits = result.get("splits") or {}
    stats = result.get("stats") or {}
    parts = []
    for name, info in splits.items():
        items, given = info.get("items"), info.get("of", info.get("items"))
        parts.append(f"{name}: {items} items" if given == items else f"{name}: {items} of {given} items")
    if result.get("limited"):
        parts.append("[yellow]limited by eval.max_items: not a full evaluation[/yellow]")
    if "seconds_total" in stats:
        parts.append(f"{stats['seconds_total']:.1f} s")
    if parts:
        table.caption = ", ".join(parts)
    console.print(table)


def null_reasons(metrics: Mapping[str, Mapping[str, Any]], names: Iterable[str]) -> dict[str, str]:
    """Why each of ``names`` has no finite value (strict JSON prints it as ``null``)."""
    reasons = {}
    for name in names:
        value = metrics.get(name, {}).get("value")
        if value is None or not math.isfinite(value):
            reasons[name] = metrics.get(name, {}).get("unavailable") or "not a finite number"
    return reasons


def parse_gate(text: str, names: Iterable[str] | None = None) -> Gate:
    """``"model_utility=0.5"`` -> ``("model_utility", 0.5)``; a user error names the fix. With
    ``names`` (the task's metrics), a name outside them is refused, with the closest one."""
    name, sep, number = str(text).partition("=")
    name = name.strip()
    if not sep or not name:
        raise UserError(f"gate '{text}' must look like METRIC=THRESHOLD, e.g. model_utility=0.5")
    if names is not None and name not in (names := list(names)):
        raise unknown_name("metric in gate", name, names)
    try:
        threshold = float(number)
    except ValueError:
        raise UserError(
            f"gate '{text}': threshold '{number.strip()}' is not a number, e.g. {name}=0.5"
        ) from None
    if not math.isfinite(threshold):
        raise UserError(f"gate '{text}': the threshold must be a finite number")
    return name, threshold


def _gates(items: Iterable[str | Gate], suite: Suite | None) -> list[Gate]:
    texts = [item if isinstance(item, str) else f"{item[0]}={item[1]}" for item in items]
    return [parse_gate(text, suite) for text in texts]


def check_gates(
    result: Mapping[str, Any],
    fail_under: Iterable[str | Gate] = (),
    fail_over: Iterable[str | Gate] = (),
    suite: Suite | None = None,
) -> list[str]:
    """Messages for every failed gate (empty when all pass), each naming the gate."""
    metrics = result.get("metrics", {})
    failures = []
    for flag, gates, fails in (
        ("--fail-under", _gates(fail_under, suite), lambda v, t: v < t),
        ("--fail-over", _gates(fail_over, suite), lambda v, t: v > t),
    ):
        for name, threshold in gates:
            gate = f"{flag} {name}={threshold:g}"
            entry = metrics.get(name)
            if entry is None:
                failures.append(
                    f"gate {gate} failed: {name} was not computed (add it to the metrics selection)"
                )
            elif entry.get("value") is None:
                failures.append(
                    f"gate {gate} failed: {name} is unavailable ({entry.get('unavailable', 'no value')})"
                )
            elif not math.isfinite(entry["value"]):
                failures.append(f"gate {gate} failed: {name} is {entry['value']}, not a finite number")
            elif fails(entry["value"], threshold):
                relation = "below" if flag == "--fail-under" else "above"
                failures.append(
                    f"gate {gate} failed: {name} = {format_value(name, entry['value'], suite)} is {relation} {threshold:g}"
                )
    return failures
