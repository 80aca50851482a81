"""Provenance files of a run folder (the folder itself is written with data.io.atomic_dir)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any


def versions() -> dict[str, str]:
    """Versions of soulcli, Python and the libraries that shape the numbers."""
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("soulcli", "torch", "transformers", "peft", "tokenizers", "scipy", "rouge-score", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


class JsonlWriter:
    """Appends one JSON object per line, flushed each time (tail -f friendly)."""

    def __init__(self, path: Path):
        self._f = open(path, "a", buffering=1)

    def __call__(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        self._f.close()
