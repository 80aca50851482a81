"""Every registered optimizer and every objective runs through `soul unlearn` on the micro recipe."""

from __future__ import annotations

import json
import math

import pytest

from soulcli.objectives import OBJECTIVES
from soulcli.optim import OPTIMIZERS


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_unlearn_with_every_optimizer(soul, pipeline, tmp_path, name):
    run = tmp_path / "run"
    out = soul.json("unlearn", "--set", f"optimizer.name={name}", "--set", "optimizer.args={}",
                    "--output", str(run))
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert "update_norm" in rows[0]
    if name in ("sophiag", "sophiah"):
        assert 0.0 <= rows[0]["win_rate"] <= 1.0 and rows[0]["hessian_norm"] > 0
    if name == "adahessian":
        assert rows[0]["hessian_norm"] > 0
    assert out["optimizer"] == name and 0.0 <= out["metrics"]["model_utility"] <= 1.0


@pytest.mark.parametrize("optimizer", ["adamw", "sophiag"])
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_unlearn_with_every_objective(soul, pipeline, tmp_path, objective, optimizer):
    run = tmp_path / "run"
    soul.json("unlearn", "--set", f"unlearn.objective={objective}", "--set", f"optimizer.name={optimizer}",
              "--set", "optimizer.args={}", "--output", str(run))
    rows = _rows(run)
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and math.isfinite(r["forget_loss"]) for r in rows)


def test_influence_method(soul, pipeline, tmp_path):
    run = tmp_path / "run"
    out = soul.json("unlearn", "--set", "unlearn.method=influence", "--output", str(run))
    rows = _rows(run)
    assert len(rows) == 1 and out["method"] == "influence" and out["steps"] == 1


def test_influence_scale_defaults_to_forget_over_retain_answer_tokens(soul, pipeline, tmp_path):
    """The default scale is the sum-weighted Newton step's: learned forget tokens / retain tokens
    of the sets unlearned, counted independently here from the tokenizer's own encodings."""
    from transformers import PreTrainedTokenizerFast

    from soulcli.data.tofu import load_split

    target = pipeline["finetuned"]["models"]["target"]["path"]
    tok = PreTrainedTokenizerFast.from_pretrained(target)

    def answer_tokens(split):  # tokens overlapping the answer + one EOS, as learned within max_length 64
        n = 0
        for r in load_split(pipeline["prepared"]["path"], split):
            prompt = f"Question: {r['question']}\nAnswer: "
            enc = tok(prompt + r["answer"], return_offsets_mapping=True)
            spans = [(s, e) for t, (s, e) in zip(enc.input_ids, enc.offset_mapping)
                     if not (t == tok.eos_token_id and s == e)]
            head = sum(1 for s, e in spans if e <= len(prompt))
            n += min(len(spans) - head + 1, 64 - head)
        return n

    run = tmp_path / "run"
    soul.json("unlearn", "--set", "unlearn.method=influence", "--output", str(run))
    want = answer_tokens("forget10") / answer_tokens("retain90")
    assert _rows(run)[0]["scale"] == pytest.approx(want, rel=1e-12)
    soul.json("unlearn", "--set", "unlearn.method=influence", "--set", "unlearn.influence.scale=0.5",
              "--output", str(tmp_path / "fixed"))
    assert _rows(tmp_path / "fixed")[0]["scale"] == 0.5
