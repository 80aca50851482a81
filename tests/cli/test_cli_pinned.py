"""Regression pins: the micro recipe's first losses and final metrics against stored values.

The values in ``tests/assets/pinned_micro.json`` were produced by this code on the development
machine (2 CPU threads). Losses, gradient norms and win rates must match to a relative 1e-4 and
the final evaluation aggregates to an absolute 1e-3: fp32 reductions on another CPU or thread
count move the last bits, anything beyond that is a change of behaviour. After a deliberate
change, refresh them with one command and review the diff:

    SOUL_PIN_REFRESH=1 .venv/bin/pytest tests/cli/test_cli_pinned.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

PINNED = Path(__file__).resolve().parents[1] / "assets" / "pinned_micro.json"
REFRESH = os.environ.get("SOUL_PIN_REFRESH") == "1"
ROW_KEYS = ("loss", "forget_loss", "retain_loss", "grad_norm", "win_rate", "npo_weight")
AGGREGATES = ("forget_quality", "model_utility", "forget_rougeL_recall", "retain_rougeL_recall",
              "forget_truth_ratio", "forget_prob")
RTOL, ATOL = 1e-4, 1e-3


def _rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: r[k] for k in ("step", *ROW_KEYS) if k in r} for r in rows]


def _record(run: Path, finetune: Path | None = None) -> dict:
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    out = {"rows": _rows(run / "metrics.jsonl"), "aggregates": {k: metrics[k] for k in AGGREGATES}}
    if finetune is not None:
        out["finetune_rows"] = [{k: r[k] for k in ("step", "loss")}
                                for r in _rows(finetune / "metrics.jsonl")]
    return out


@pytest.fixture(scope="module")
def measured(soul, pipeline, tmp_path_factory) -> dict:
    npo = tmp_path_factory.mktemp("pinned") / "npo"
    soul.json("unlearn", "--set", "unlearn.objective=npo", "--set", "optimizer.name=adamw",
              "--set", "optimizer.args={}", "--set", "unlearn.epochs=3", "--output", str(npo))
    target = Path(pipeline["finetuned"]["models"]["target"]["path"])
    return {"sophiag_graddiff": _record(pipeline["run"], target), "adamw_npo": _record(npo)}


def _close(got: float | None, want: float | None, rtol: float, atol: float) -> bool:
    if got is None or want is None:
        return got is want
    return abs(got - want) <= atol + rtol * abs(want)


def check_task_pins(run: dict, names, pinned: Path, n_rows: int) -> None:
    """A task's micro run (``run``: the fixture's finetune record and run folder) against its
    pinned file: finetune and unlearning losses (RTOL), final ``names`` metrics (ATOL);
    SOUL_PIN_REFRESH=1 rewrites the file."""
    target = Path(run["finetuned"]["models"]["target"]["path"])
    metrics = json.loads((run["run"] / "summary.json").read_text())["metrics"]
    got = {"rows": _rows(run["run"] / "metrics.jsonl"),
           "finetune_rows": [{k: r[k] for k in ("step", "loss")} for r in _rows(target / "metrics.jsonl")],
           "aggregates": {k: metrics[k] for k in names}}
    if REFRESH:
        pinned.write_text(json.dumps(got, indent=1) + "\n")
        pytest.skip(f"refreshed {pinned}")
    want = json.loads(pinned.read_text())
    assert len(want["rows"]) == n_rows and want["rows"][0]["loss"] != want["rows"][-1]["loss"]
    for key in ("rows", "finetune_rows"):
        assert len(got[key]) == len(want[key])
        for g, w in zip(got[key], want[key]):
            assert g.keys() == w.keys()
            assert all(_close(g[k], w[k], RTOL, 0.0) for k in w), (key, g, w)
    assert all(_close(got["aggregates"][k], v, 0.0, ATOL) for k, v in want["aggregates"].items()), got


def test_first_losses_and_final_metrics_match_the_stored_values(measured):
    if REFRESH:
        PINNED.write_text(json.dumps(measured, indent=1) + "\n")
        pytest.skip(f"refreshed {PINNED}")
    pinned = json.loads(PINNED.read_text())
    assert set(measured) == set(pinned)
    for run, want in pinned.items():
        got = measured[run]
        for key in ("rows", "finetune_rows"):
            assert len(got.get(key, [])) == len(want.get(key, [])), (run, key)
            for g, w in zip(got.get(key, []), want.get(key, [])):
                assert g.keys() == w.keys(), (run, key, g["step"])
                bad = {k: (g[k], w[k]) for k in w if not _close(g[k], w[k], RTOL, 0.0)}
                assert not bad, (run, key, g["step"], bad)
        bad = {k: (got["aggregates"][k], v) for k, v in want["aggregates"].items()
               if not _close(got["aggregates"][k], v, 0.0, ATOL)}
        assert not bad, (run, bad)


def test_the_pins_are_not_trivial():
    """The stored file must hold real, distinct figures (a refresh that wrote nothing fails)."""
    pinned = json.loads(PINNED.read_text())
    rows = pinned["sophiag_graddiff"]["rows"]
    assert len(rows) == 2 and rows[0]["loss"] != rows[1]["loss"]
    assert 0.0 < rows[0]["win_rate"] < 1.0
    assert len(pinned["sophiag_graddiff"]["finetune_rows"]) >= 2
    assert len(pinned["adamw_npo"]["rows"]) == 6
    assert pinned["adamw_npo"]["rows"][0]["npo_weight"] == pytest.approx(1.0, abs=1e-6)
