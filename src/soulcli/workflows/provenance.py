"""What a run was made from: ``provenance.json`` records the absolute data, target and
reference folders it used, each with a content fingerprint, and :func:`verified` checks them
before `soul evaluate RUN` uses them, so a run evaluated from anywhere is scored on the very
files it was made from, or refused (exit 2), never silently on rebuilt or other ones.

Fingerprints: a data folder by its task's files (:func:`common.data_fingerprint`), a model
folder by its config, tokenizer and weight files (:func:`soulcli.models.loading.model_fingerprint`,
a full sha256). A hub id is recorded by name; its files are not at hand to check.
"""

from __future__ import annotations

import json
from pathlib import Path

from soulcli.errors import UserError
from soulcli.models.loading import model_fingerprint
from soulcli.recipe import Recipe
from soulcli.workflows import common

FILE = "provenance.json"
ROLES = ("data", "target", "reference")
#: How to go on when an input is gone or changed, per role (flags of `soul evaluate`).
FIXES = {
    "data": "restore it, or pass --data DIR to evaluate on a data folder given anew",
    "target": "restore it, or pass --target PATH where it lies now (the same files)",
    "reference": "restore it, or pass --reference PATH (a retain model folder or an eval.json)",
}


def _fingerprint(role: str, path: Path, recipe: Recipe) -> str:
    return common.data_fingerprint(path, recipe) if role == "data" else model_fingerprint(path)


def record(recipe: Recipe, data_dir: Path, target_dir: Path | None,
           reference_dir: Path | None) -> dict[str, dict | None]:
    """The provenance of a run: per role ``{"path", "fingerprint"}`` (``fingerprint`` None for
    a hub id), None for an input it did not use (no reference model)."""
    out: dict[str, dict | None] = {}
    for role, path in zip(ROLES, (data_dir, target_dir, reference_dir)):
        if path is None:
            out[role] = None
        elif Path(path).is_dir():
            out[role] = {"path": str(Path(path).resolve()), "fingerprint": _fingerprint(role, Path(path), recipe)}
        else:
            out[role] = {"path": str(path), "fingerprint": None}
    return out


def verified(run_dir: Path, recipe: Recipe, given: set[str],
             moved: dict[str, Path] | None = None) -> dict[str, Path | None] | None:
    """The run's recorded inputs by role, each checked to be there with its recorded
    fingerprint; None for a run written before soulcli recorded provenance. Roles in
    ``given`` (data or reference named anew on the command line) are not checked; ``moved``
    names where an input lies now (it must hold the same content). A gone or changed input is
    a user error naming it and the flag that gives it anew."""
    file = run_dir / FILE
    if not file.is_file():
        return None
    try:
        recorded = json.loads(file.read_text(encoding="utf-8"))
        if not all(recorded[r] is None or {"path", "fingerprint"} <= set(recorded[r]) for r in ROLES):
            raise ValueError
    except (OSError, ValueError, TypeError, KeyError):
        raise UserError(f"{file} is not a provenance record; restore it or re-run `soul unlearn`") from None
    out: dict[str, Path | None] = {}
    for role in ROLES:
        entry = recorded.get(role)
        if role in given or entry is None:
            out[role] = None
            continue
        path = Path((moved or {}).get(role) or entry["path"])
        if entry["fingerprint"] is None:  # a hub id
            out[role] = path
            continue
        if not path.is_dir():
            raise UserError(f"the run's {role} folder {path} is gone; {FIXES[role]}")
        if _fingerprint(role, path, recipe) != entry["fingerprint"]:
            raise UserError(f"the run's {role} folder {path} "
                            f"{'is not the one recorded' if path != Path(entry['path']) else 'changed since the run'} "
                            f"(its content fingerprint differs); {FIXES[role]}")
        out[role] = path
    return out
