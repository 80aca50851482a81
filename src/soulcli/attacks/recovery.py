"""How much of the forgetting an attack undoes, and the flat names the CLI gates read.

For a metric ``m`` measured on the target model (before unlearning), on the unlearned model and
on the attacked one, the recovered share of the gap is

    recovered = (m_attacked - m_unlearned) / (m_target - m_unlearned)

0: the attack changed nothing, 1: it brought the target's value back (above 1 or below 0 when
it overshoots either way). The direction a metric improves in does not matter: the ratio is the
same for "higher is better" and "lower is better". When the gap is zero (unlearning did not move
the metric) or a value is missing or not finite, the share is None with the reason, never NaN.

Gate names (``soul attack --fail-over relearn25.recovered.forget_rougeL_recall=0.5``): every
attack point has a label (``relearn25``: after 25 relearning steps; ``quantize4``: 4-bit
weights; ``paraphrase`` / ``fewshot``: a probe), and ``LABEL.METRIC`` is the attacked value,
``LABEL.recovered.METRIC`` its recovered share; ``unlearned.METRIC`` and ``target.METRIC``
are the two ends of the gap.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

ATTACKS = ("relearn", "quantize", "probe")


def recovered(attacked: float | None, unlearned: float | None,
              target: float | None) -> tuple[float | None, str | None]:
    """``(share, None)``, or ``(None, reason)`` when the share is undefined."""
    values = {"attacked": attacked, "unlearned": unlearned, "target": target}
    for name, value in values.items():
        if value is None or not math.isfinite(value):
            return None, f"the {name} value is {'unavailable' if value is None else value}"
    gap = target - unlearned  # type: ignore[operator]
    if gap == 0:
        return None, "the target and the unlearned model score the same: there is no gap to recover"
    return (attacked - unlearned) / gap, None  # type: ignore[operator]


def point(label: str, values: Mapping[str, float | None], reasons: Mapping[str, str],
          unlearned: Mapping[str, float | None], target: Mapping[str, float | None],
          **about: Any) -> dict[str, Any]:
    """One attack point of attack.json: its values, their recovered shares, and why any is null."""
    shares, why = {}, {f"{m}": r for m, r in reasons.items()}
    for name, value in values.items():
        shares[name], reason = recovered(value, unlearned.get(name), target.get(name))
        if reason:
            why[f"recovered.{name}"] = reason
    return {"label": label, **about, "metrics": dict(values), "recovered": shares, "null_reasons": why}


def recovery_view(unlearned: Mapping[str, float | None], target: Mapping[str, float | None],
                  points: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every gate name with ``{"value": ...}`` (or ``{"value": None, "unavailable": reason}``),
    the shape :func:`soulcli.eval.report.check_gates` reads under ``"metrics"``."""
    view: dict[str, dict[str, Any]] = {}
    for label, values in (("unlearned", unlearned), ("target", target)):
        view.update({f"{label}.{m}": {"value": v} for m, v in values.items()})
    for p in points:
        why = p.get("null_reasons", {})
        if "unavailable" in p:  # an attack that could not run (a probe the task lacks)
            names = {f"{m}" for m in unlearned} | {f"recovered.{m}" for m in unlearned}
            view.update({f"{p['label']}.{n}": {"value": None, "unavailable": p["unavailable"]} for n in names})
            continue
        for key, values in (("", p["metrics"]), ("recovered.", p["recovered"])):
            for m, v in values.items():
                entry: dict[str, Any] = {"value": v}
                if v is None:
                    entry["unavailable"] = why.get(f"{key}{m}", "not computed")
                view[f"{p['label']}.{key}{m}"] = entry
    return view


def gate_names(metrics: Iterable[str], labels: Iterable[str]) -> list[str]:
    """The gate names an attack run will have (checked before any work)."""
    metrics = list(metrics)
    names = [f"{end}.{m}" for end in ("unlearned", "target") for m in metrics]
    for label in labels:
        names += [f"{label}.{m}" for m in metrics] + [f"{label}.recovered.{m}" for m in metrics]
    return names
