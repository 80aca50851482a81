"""Reference values from the retain / retrain model, for the metrics that compare with it.

TOFU's forget quality tests the evaluated model's per-item forget truth ratios against the
retain model's; MUSE's PrivLeak scales the membership AUC by the retrain model's. A metric
names the entries it reads (``Metric.reference_needs``); a reference keeps those entries of the
reference model's evaluation (value and per-item values) with the split fingerprints, so a
reference computed on other items is refused. An eval.json of the reference model serves as
well: :func:`as_reference` extracts the same values from it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from soulcli.data.io import write_json
from soulcli.errors import UserError

REFERENCE_FORMAT = "soulcli-eval-reference"
REFERENCE_VERSION = 2


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _entry(name: str, entry: Any) -> dict[str, Any] | None:
    """The reference part of one metric entry (``value``, ``per_item`` when numeric)."""
    if not isinstance(entry, Mapping) or entry.get("value") is None:
        return None
    if not _finite(entry["value"]):
        raise UserError(f"the reference's {name} is {entry['value']!r}, not a finite number; "
                        "evaluate the retain model again")
    out: dict[str, Any] = {"value": float(entry["value"])}
    per_item = entry.get("per_item")
    if isinstance(per_item, list) and all(_finite(x) for x in per_item):
        out["per_item"] = [float(x) for x in per_item]
    return out


def reference_from_result(result: Mapping[str, Any], names: Iterable[str] | None = None) -> dict[str, Any]:
    """The reference in an evaluation result (``evaluate_model``'s, or an eval.json): the
    entries named by ``names`` (every computed one when None) and the split fingerprints."""
    metrics = result.get("metrics")
    if not isinstance(metrics, Mapping):
        raise UserError("the reference result has no 'metrics'; pass an eval.json written by soul evaluate")
    wanted = list(metrics) if names is None else list(names)
    kept = {name: e for name in wanted if (e := _entry(name, metrics.get(name))) is not None}
    if not kept:
        raise UserError("the reference result has none of the metrics a reference needs"
                        f"{' (' + ', '.join(wanted) + ')' if names is not None else ''}; "
                        "evaluate the retain model with those metrics selected")
    fingerprints = result.get("fingerprints")  # a reference's own
    if not isinstance(fingerprints, Mapping):
        fingerprints = {name: info["fingerprint"] for name, info in (result.get("splits") or {}).items()
                        if isinstance(info, Mapping) and "fingerprint" in info}
    return {"format": REFERENCE_FORMAT, "version": REFERENCE_VERSION, "metrics": kept,
            "fingerprints": dict(fingerprints)}


def as_reference(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Accept a reference or a whole evaluation result; return a checked reference."""
    if not isinstance(obj, Mapping):
        raise UserError("a reference must be a JSON object (a reference file or an eval.json)")
    if obj.get("format") != REFERENCE_FORMAT:
        if "metrics" in obj:
            return reference_from_result(obj)
        raise UserError(f'not a reference: expected "format": "{REFERENCE_FORMAT}" or an eval.json '
                        "with 'metrics'")
    if obj.get("version") != REFERENCE_VERSION:
        raise UserError(f"reference format version {obj.get('version')!r} is not {REFERENCE_VERSION}; "
                        "write it again with this soulcli (evaluate the retain model)")
    if not isinstance(obj.get("metrics"), Mapping):
        raise UserError("the reference's 'metrics' must map metric names to entries")
    return reference_from_result(obj)


def save_reference(path: str | Path, reference: Mapping[str, Any]) -> Path:
    """Write a reference as JSON, atomically (to cache the retain model's values between
    evaluations)."""
    return write_json(path, as_reference(reference))


def load_reference(path: str | Path) -> dict[str, Any]:
    """Read a reference file or a retain model's eval.json."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"reference file {path} does not exist; give a reference JSON or the retain "
                        "model's eval.json")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"reference file {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return as_reference(obj)
