"""``data.template.chat_template: true`` through unlearn, evaluate and attack on a model whose
tokenizer has a chat template: every command renders it with the model's tokenizer.

The chat template written here renders exactly the micro recipe's plain prompt (``<s>Question:
q\\nAnswer: a``), so a run under it must be the plain template's run, loss for loss and metric
for metric (stop strings off in both: a rendered chat template has none, generation ends at
EOS); one that renders otherwise must score otherwise.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import AutoTokenizer

# (an answer followed by another turn ends in a newline, as the plain few-shot prompt's do; written
# {{ '\n' }}: transformers renders with trim_blocks, which drops a newline right after a tag)
SAME_AS_PLAIN = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}Question: {{ m['content'] }}\n"
                 "{% else %}Answer: {{ m['content'] }}{% if not loop.last %}{{ '\\n' }}{% endif %}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}Answer: {% endif %}")
MAX_LENGTH = 48  # cuts 7 of the 8 forget sequences (37-62 tokens), no prompt (at most 35)


def _with_chat(model_dir: str | Path, out: Path, chat_template: str) -> Path:
    """A copy of a model folder whose tokenizer carries ``chat_template``."""
    shutil.copytree(model_dir, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out)
    return out


def _values(eval_json: Path) -> dict:
    return {k: m.get("value") for k, m in json.loads(eval_json.read_text())["metrics"].items()}


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _attack_points(soul, run: Path, out: Path) -> dict:
    res = soul("attack", str(run), "--relearn-steps", "0,1", "--relearn-fraction", "0.25", "--attacks",
               "relearn,probe", "--probe", "fewshot", "--set", "data.max_length=256",  # room for 3 shots
               "-o", str(out), recipe=None)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "attack.json").read_text())
    assert "unavailable" not in report["probe"]["points"][0], report["probe"]
    return {p["label"]: p["metrics"] for p in report["relearn"]["points"] + report["probe"]["points"]}


def test_a_chat_template_is_rendered_by_the_models_tokenizer_in_every_command(soul, pipeline, tmp_path):
    models = pipeline["finetuned"]["models"]
    target = _with_chat(models["target"]["path"], tmp_path / "target", SAME_AS_PLAIN)
    retain = _with_chat(models["retain"]["path"], tmp_path / "retain", SAME_AS_PLAIN)
    shared = ("--set", f"model.source={target}", "--set", f"model.reference={retain}",
              "--set", "data.template.stop_strings=[]", "--set", f"data.max_length={MAX_LENGTH}")
    runs = {"plain": tmp_path / "plain", "chat": tmp_path / "chat"}
    logs = {}
    for name, run in runs.items():
        chat = ("--set", "data.template.chat_template=true") if name == "chat" else ()
        res = soul("unlearn", *shared, *chat, "-o", str(run))
        assert res.exit_code == 0, res.output
        logs[name] = res.output
    plain, chat = runs["plain"], runs["chat"]
    assert "chat_template: true" in (chat / "resolved_recipe.yaml").read_text()

    assert _losses(chat) == _losses(plain) and len(_losses(chat)) > 1
    expected = _values(plain / "eval.json")
    assert expected["forget_quality"] is not None and expected["forget_rougeL_recall"] is not None
    assert _values(chat / "eval.json") == expected

    # cut sequences are counted in summary.json (and the log), the same under both templates
    summaries = [json.loads((run / "summary.json").read_text()) for run in (plain, chat)]
    for summary in summaries:
        assert summary["truncated"] == {"forget": 7, "retain": summary["truncated"]["retain"], "max_length": MAX_LENGTH}
        assert summary["eval_limited"] is False
    assert summaries[0]["truncated"] == summaries[1]["truncated"]
    for log in logs.values():
        assert f"unlearn: 7 of 8 forget, {summaries[0]['truncated']['retain']} of " in log
        assert f"sequences cut at data.max_length={MAX_LENGTH} tokens" in log

    # `soul evaluate RUN` with the run's own recipe (chat_template: true)
    res = soul("evaluate", str(chat), "--output", str(tmp_path / "again.json"), recipe=None, cache=False)
    assert res.exit_code == 0, res.output
    assert _values(tmp_path / "again.json") == expected

    # `soul attack`: the relearning attack and the few-shot probe (the template's own strings)
    assert _attack_points(soul, chat, tmp_path / "attack-chat") == _attack_points(soul, plain, tmp_path / "attack-plain")

    # a chat template that renders another prompt is what gets scored
    other = _with_chat(target, tmp_path / "other", SAME_AS_PLAIN.replace("Question: ", "User asks: "))
    probs = {}
    for name, model, chat in (("plain", target, "false"), ("same", target, "true"), ("other", other, "true")):
        out = tmp_path / f"{name}.json"
        res = soul("evaluate", "--model", str(model), "--set", f"data.template.chat_template={chat}",
                   "--set", "data.template.stop_strings=[]", "--set", "model.reference=none",
                   "--set", f"data.max_length={MAX_LENGTH}", "--metrics", "forget_prob", "--output", str(out))
        assert res.exit_code == 0, res.output
        probs[name] = _values(out)["forget_prob"]
    assert probs["same"] == probs["plain"]
    assert abs(probs["other"] - probs["same"]) > 1e-3 * probs["same"]
