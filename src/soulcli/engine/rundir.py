"""Run directories that appear complete or not at all, plus provenance files."""

from __future__ import annotations

import json
import os
import platform
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def staged_output(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to ``final`` only if the block succeeds.

    An interrupted or failed run leaves at most a hidden ``.<name>.partial-*`` folder, never a
    folder that looks finished. An existing ``final`` is replaced only after success.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
