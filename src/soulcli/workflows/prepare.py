"""prepare-data: build the synthetic benchmark or import real TOFU files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from soulcli.engine.progress import Reporter
from soulcli.recipe import Recipe
from soulcli.workflows import common


def run_prepare(recipe: Recipe, reporter: Reporter, output: Path | None = None) -> dict[str, Any]:
    """Write the benchmark to ``output`` (or the recipe's cache) and describe it."""
    from soulcli.data import synthetic, tofu

    if output is None:
        data_dir = common.benchmark_dir(recipe, reporter)
    else:
        data_dir = Path(output)
        if recipe.data.source == "builtin":
            d = recipe.data
            reporter.info(f"Building the built-in benchmark ({d.num_authors} authors) in {data_dir}")
            synthetic.write_benchmark(synthetic.generate_benchmark(
                num_authors=d.num_authors, questions_per_author=d.questions_per_author, seed=d.seed), data_dir)
        else:
            reporter.info(f"Importing TOFU data from {recipe.data.source} into {data_dir}")
            tofu.import_tofu(recipe.data.source, data_dir)
    manifest = json.loads((data_dir / "benchmark.json").read_text())
    reporter.info(f"Benchmark ready in {data_dir}")
    counts = manifest.get("counts", {})
    for name in sorted(counts):
        reporter.info(f"  {name:<26} {counts[name]:>6} items")
    return {"path": str(data_dir), **manifest}
