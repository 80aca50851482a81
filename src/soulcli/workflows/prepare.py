"""prepare-data: build the synthetic benchmark or import real TOFU files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from soulcli.data.io import read_manifest
from soulcli.engine.progress import Reporter
from soulcli.recipe import Recipe
from soulcli.workflows import common


def run_prepare(recipe: Recipe, reporter: Reporter, output: Path | None = None,
                overwrite: bool = False) -> dict[str, Any]:
    """Write the benchmark to ``output`` (or the recipe's cache) and describe it; an existing
    non-empty ``output`` is replaced only with ``overwrite`` and only if soulcli wrote it."""
    if output is None:
        data_dir = common.benchmark_dir(recipe, reporter)
    else:
        data_dir = Path(output)
        common.write_benchmark(recipe, data_dir, reporter, overwrite=overwrite)
    manifest = read_manifest(data_dir) or {}
    reporter.info(f"Benchmark ready in {data_dir}")
    counts = manifest.get("counts", {})
    for name in sorted(counts):
        reporter.info(f"  {name:<26} {counts[name]:>6} items")
    return {"path": str(data_dir), **manifest}
