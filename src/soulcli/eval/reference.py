"""Reference values from the retain model, for forget quality and PrivLeak.

Both metrics compare the evaluated model with a model never trained on the forget set:
forget quality tests its per-item forget truth ratios against the evaluated model's (TOFU),
PrivLeak scales the membership AUC by the retain model's (MUSE). A reference is a small JSON
object; an earlier eval.json of the retain model serves as well, since
:func:`as_reference` extracts the same values from it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from soulcli.data.io import write_json
from soulcli.errors import UserError
from soulcli.eval.registry import ATTACKS

REFERENCE_FORMAT = "soulcli-eval-reference"
REFERENCE_VERSION = 1


def fingerprint(rows: Sequence[Mapping[str, Any]]) -> str:
    """Short hash of a split's questions and answers, to tell whether two evaluations used the
    same items."""
    text = json.dumps([[r.get("question"), r.get("answer")] for r in rows], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def reference_from_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """The values a reference needs, taken from ``evaluate_model``'s result for the retain model:
    the forget set's per-item truth ratios, the membership AUCs, and split fingerprints."""
    metrics = result.get("metrics")
    if not isinstance(metrics, Mapping):
        raise UserError(
            "the reference result has no 'metrics'; pass an eval.json written by soul evaluate"
        )
    tr = metrics.get("forget_truth_ratio") or {}
    ratios = tr.get("per_item") if tr.get("value") is not None else None
    aucs = {}
    for attack in ATTACKS:
        value = (metrics.get(f"mia_{attack}_auc") or {}).get("value")
        if value is not None:
            aucs[attack] = float(value)
    if ratios is None and not aucs:
        raise UserError(
            "the reference result has neither forget_truth_ratio per item nor any mia_*_auc; "
            "evaluate the retain model with those metrics selected"
        )
    splits = result.get("splits") or {}
    return {
        "format": REFERENCE_FORMAT,
        "version": REFERENCE_VERSION,
        "forget_truth_ratio": [float(x) for x in ratios] if ratios is not None else None,
        "mia_auc": aucs,
        "fingerprints": {
            name: info["fingerprint"]
            for name, info in splits.items()
            if isinstance(info, Mapping) and "fingerprint" in info
        },
    }


def as_reference(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Accept a reference or a whole evaluation result; return a checked reference."""
    if not isinstance(obj, Mapping):
        raise UserError("a reference must be a JSON object (a reference file or an eval.json)")
    if "metrics" in obj:
        return reference_from_result(obj)
    if obj.get("format") != REFERENCE_FORMAT:
        raise UserError(
            f'not a reference: expected "format": "{REFERENCE_FORMAT}" or an eval.json with \'metrics\''
        )
    ratios = obj.get("forget_truth_ratio")
    if ratios is not None and not (
        isinstance(ratios, list)
        and all(isinstance(x, (int, float)) and math.isfinite(x) for x in ratios)
    ):
        raise UserError("the reference's forget_truth_ratio must be a list of finite numbers")
    aucs = obj.get("mia_auc") or {}
    if not isinstance(aucs, Mapping) or not all(isinstance(v, (int, float)) for v in aucs.values()):
        raise UserError("the reference's mia_auc must map attack names to numbers")
    return {
        "format": REFERENCE_FORMAT,
        "version": obj.get("version", REFERENCE_VERSION),
        "forget_truth_ratio": ratios,
        "mia_auc": dict(aucs),
        "fingerprints": dict(obj.get("fingerprints") or {}),
    }


def save_reference(path: str | Path, reference: Mapping[str, Any]) -> Path:
    """Write a reference as JSON, atomically (to cache the retain model's values between
    evaluations)."""
    return write_json(path, as_reference(reference))


def load_reference(path: str | Path) -> dict[str, Any]:
    """Read a reference file or a retain model's eval.json."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"reference file {path} does not exist; give a reference JSON or the retain model's eval.json"
        )
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(
            f"reference file {path} is not valid JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    return as_reference(obj)
