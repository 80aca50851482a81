from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from soulcli.cli import app

MICRO = Path(__file__).resolve().parents[1] / "assets" / "micro.yaml"


class Soul:
    """Runs `soul ...` in-process; a cache shared by the whole session keeps it fast."""

    def __init__(self, cache: Path):
        self.cache = cache
        self.runner = CliRunner()

    def __call__(self, *args: str, recipe: Path | None = MICRO, cache: bool = True):
        argv = list(args)
        if recipe is not None and "--recipe" not in argv:
            argv += ["--recipe", str(recipe)]
        if cache:
            argv += ["--set", f"cache_dir={self.cache}"]
        return self.runner.invoke(app, argv, catch_exceptions=False)

    def json(self, *args: str, **kw):
        res = self(*args, "--json", **kw)
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)


@pytest.fixture(scope="session")
def soul(tmp_path_factory) -> Soul:
    return Soul(tmp_path_factory.mktemp("soul-cache"))


@pytest.fixture(scope="session")
def pipeline(soul, tmp_path_factory):
    """prepare-data -> finetune -> unlearn on the micro recipe, once per session."""
    work = tmp_path_factory.mktemp("pipeline")
    prepared = soul.json("prepare-data")
    finetuned = soul.json("finetune")
    unlearned = soul.json("unlearn", "--output", str(work / "run"))
    return {"prepared": prepared, "finetuned": finetuned, "unlearned": unlearned, "run": work / "run",
            "work": work}
