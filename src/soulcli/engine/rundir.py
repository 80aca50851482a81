"""Provenance files of a run folder (the folder itself is written with data.io.atomic_dir,
its JSON with data.io.write_json)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from soulcli.data.io import to_json


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


class JsonlWriter:
    """Appends one JSON object per line, flushed each time (tail -f friendly)."""

    def __init__(self, path: Path):
        self._f = open(path, "a", buffering=1, encoding="utf-8")

    def __call__(self, row: dict[str, Any]) -> None:
        self._f.write(to_json(row) + "\n")

    def close(self) -> None:
        self._f.close()
