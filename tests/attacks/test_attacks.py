"""Attacks: the recovered share, round-to-nearest quantization, the probes' prompts, and
relearning through the finetuning loop on a micro model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from soulcli.attacks import fake_quantize, quantize_linears, recovered, recovery_view
from soulcli.attacks.recovery import gate_names, point
from soulcli.data.template import PromptTemplate
from soulcli.errors import UserError
from soulcli.eval.metric import Unavailable
from soulcli.tasks import TrainSet, get_task
from soulcli.tasks.base import QA
from soulcli.tasks.muse import MuseTaskData
from soulcli.tasks.tofu import TofuData
from soulcli.workflows.attack import relearn_subset


# ---------------------------------------------------------------------------- recovered share

@pytest.mark.parametrize("attacked, unlearned, target, share", [
    (0.6, 0.2, 1.0, 0.5),     # higher on the target: half the gap back
    (0.3, 0.1, 0.5, 0.5),
    (0.2, 0.8, 0.0, 0.75),    # lower on the target (a leak metric): the same ratio
    (0.2, 0.2, 1.0, 0.0),     # nothing back
    (1.2, 0.2, 1.0, 1.25),    # overshoot
    (0.1, 0.2, 1.0, -0.125),  # the attack forgot more
])
def test_recovered_share_on_hand_built_numbers(attacked, unlearned, target, share):
    value, reason = recovered(attacked, unlearned, target)
    assert value == pytest.approx(share) and reason is None


@pytest.mark.parametrize("attacked, unlearned, target, why", [
    (0.5, 0.3, 0.3, "no gap to recover"),
    (None, 0.3, 0.6, "attacked value is unavailable"),
    (0.5, math.nan, 0.6, "unlearned value is nan"),
    (0.5, 0.3, math.inf, "target value is inf"),
])
def test_an_undefined_share_is_none_with_the_reason(attacked, unlearned, target, why):
    value, reason = recovered(attacked, unlearned, target)
    assert value is None and why in reason


def test_the_gate_view_names_every_point_and_its_shares():
    unlearned, target = {"fq": 0.1, "mu": 0.5}, {"fq": 0.9, "mu": 0.5}
    points = [point("relearn25", {"fq": 0.5, "mu": 0.4}, {}, unlearned, target, step=25),
              {"label": "fewshot", "unavailable": "too long"}]
    view = recovery_view(unlearned, target, points)
    assert view["relearn25.recovered.fq"] == {"value": pytest.approx(0.5)}
    assert view["relearn25.fq"] == {"value": 0.5} and view["target.mu"] == {"value": 0.5}
    assert view["relearn25.recovered.mu"]["value"] is None
    assert "no gap" in view["relearn25.recovered.mu"]["unavailable"]
    assert view["fewshot.recovered.fq"] == {"value": None, "unavailable": "too long"}
    assert set(view) == set(gate_names(["fq", "mu"], ["relearn25", "fewshot"]))


# ---------------------------------------------------------------------------- quantization

@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("group_size", [None, 16, 8])
def test_rounding_error_is_at_most_half_a_step_per_group(bits, group_size):
    torch.manual_seed(bits)
    w = torch.randn(24, 32) * torch.rand(24, 1) * 3
    q = fake_quantize(w, bits, group_size)
    size = group_size or 32
    groups = w.reshape(24, 32 // size, size)
    scale = (groups.amax(-1, keepdim=True) - groups.amin(-1, keepdim=True)) / (2**bits - 1)
    err = (w - q).abs().reshape(24, 32 // size, size)
    assert (err <= scale / 2 + 1e-6).all()
    levels = [torch.unique(g).numel() for g in q.reshape(-1, size)]
    assert max(levels) <= 2**bits
    if bits == 4:
        assert (err > 1e-4).any()  # it does round


def test_values_on_the_grid_are_kept_exactly():
    # 4 bits, step 0.125, zero point 3: the grid is 0.125 * (k - 3), k = 0..15, all present
    row = 0.125 * (torch.arange(16.0) - 3)
    w = torch.stack([row, row.flip(0), torch.full((16,), 0.7)])  # the last group is flat
    assert torch.equal(fake_quantize(w, 4), w)
    assert torch.equal(fake_quantize(w.to(torch.bfloat16), 4), w.to(torch.bfloat16))


def test_a_group_size_that_does_not_divide_the_inputs_leaves_a_shorter_last_group():
    """192 inputs (the built-in model's MLP width) in groups of 128: one group of 128 and one of
    64, each the same as quantizing that slice alone."""
    torch.manual_seed(0)
    w = torch.randn(6, 192) * 2
    q = fake_quantize(w, 4, 128)
    assert torch.equal(q[:, :128], fake_quantize(w[:, :128], 4)) and torch.equal(q[:, 128:], fake_quantize(w[:, 128:], 4))
    assert torch.equal(fake_quantize(w, 4, 50)[:, 150:], fake_quantize(w[:, 150:], 4))  # 50, 50, 50, 42
    assert not torch.equal(q, fake_quantize(w, 4))  # not one group per row


class HeadLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10, bias=False)

    def get_output_embeddings(self) -> nn.Module:
        return self.head


def test_every_linear_but_the_output_head_is_quantized():
    torch.manual_seed(0)
    model = HeadLM()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert quantize_linears(model, 4) == ["proj"]
    assert torch.equal(model.proj.weight, fake_quantize(before["proj.weight"], 4))
    for name in ("head.weight", "embed.weight", "proj.bias"):
        assert torch.equal(model.state_dict()[name], before[name])


# ---------------------------------------------------------------------------- probes

ROW = {"question": "Where was Ann Lee born?", "answer": "Ann Lee was born in Oslo.",
       "paraphrased_question": "What is Ann Lee's birthplace?", "paraphrased_answer": "In Oslo.",
       "perturbed_answer": ["In Rome."]}
SHOTS = [{"question": "Who wrote Tides?", "answer": "Bo Kim wrote Tides."},
         {"question": "When was Bo Kim born?", "answer": "In 1970."}]


def test_the_paraphrase_probe_asks_the_paraphrased_question():
    splits = {"forget": [ROW], "retain": SHOTS}
    probed = get_task(TofuData(), "tofu").probe("paraphrase", splits, 2)
    assert probed["forget"] == [{**ROW, "question": "What is Ann Lee's birthplace?"}]
    assert probed["retain"] is SHOTS


def test_the_fewshot_probe_puts_retain_turns_before_the_question():
    template = PromptTemplate()
    probed = get_task(TofuData(), "tofu").probe("fewshot", {"forget": [ROW], "retain": SHOTS}, 2)
    assert template.prompt(probed["forget"][0]["question"]) == (
        "Question: Who wrote Tides?\nAnswer: Bo Kim wrote Tides.\n"
        "Question: When was Bo Kim born?\nAnswer: In 1970.\n"
        "Question: Where was Ann Lee born?\nAnswer: ")
    assert template.with_shots([], "Q?") == "Q?"
    llama2 = PromptTemplate(preset="llama2")
    assert llama2.prompt(llama2.with_shots([("Who wrote Tides?", "Bo Kim.")], "Q?")) == (
        "[INST] Who wrote Tides? [/INST]Bo Kim. </s><s>[INST] Q? [/INST]")


def test_probes_a_task_cannot_build_are_unavailable_with_the_reason():
    with pytest.raises(Unavailable, match="fewer than 3 pairs"):
        get_task(TofuData(), "tofu").probe("fewshot", {"forget": [ROW], "retain": SHOTS}, 3)
    with pytest.raises(Unavailable, match="no paraphrased_question"):
        get_task(TofuData(), "tofu").probe("paraphrase", {"forget": [{"question": "q", "answer": "a"}]}, 1)
    with pytest.raises(Unavailable, match="no paraphrased forget prompts"):
        get_task(MuseTaskData(), "muse").probe("paraphrase", {}, 1)
    with pytest.raises(Unavailable, match="already asks the forget questions behind its own few-shot"):
        get_task(MuseTaskData(), "muse").probe("fewshot", {}, 1)


# ---------------------------------------------------------------------------- relearning

def test_the_relearn_subset_is_a_seeded_fraction_in_order():
    forget = TrainSet("forget10", QA, [{"question": f"q{i}", "answer": f"a{i}"} for i in range(20)])
    a, b, c = relearn_subset(forget, 0.25, 0), relearn_subset(forget, 0.25, 0), relearn_subset(forget, 0.25, 1)
    assert a.rows == b.rows and len(a.rows) == 5 and a.rows != c.rows
    assert [int(r["question"][1:]) for r in a.rows] == sorted(int(r["question"][1:]) for r in a.rows)
    assert a.name == "forget10 (5 of 20)" and len(relearn_subset(forget, 0.01, 0).rows) == 1


def test_relearning_restores_a_forgotten_items_likelihood(tmp_path):
    """A micro model is taught two items, one is unlearned by gradient ascent, and ten steps of
    the finetuning loop on that item (train_lm, as the relearning attack runs it) bring its
    answer's NLL back below where unlearning left it."""
    from soulcli.data.encode import encode_qa_batch, pad_batch
    from soulcli.engine.progress import Reporter
    from soulcli.models import builtin
    from soulcli.recipe import FinetuneConfig, Recipe
    from soulcli.workflows.finetune import train_lm
    from rich.console import Console

    items = [{"question": "Where was Ann Lee born?", "answer": "Ann Lee was born in Oslo."},
             {"question": "Who wrote Tides?", "answer": "Bo Kim wrote Tides."}]
    template = PromptTemplate()
    tokenizer = builtin.train_tokenizer([template.prompt(r["question"]) + r["answer"] for r in items] * 4, 120)
    model = builtin.build_model(tokenizer, 32, 1, 2, 64, max_position_embeddings=64, seed=0)
    recipe, reporter = Recipe(), Reporter(Console(quiet=True), quiet=True)
    settings = FinetuneConfig(epochs=60, lr=3e-3, min_lr_ratio=1.0, warmup_steps=0, batch_size=2,
                              weight_decay=0.0, max_grad_norm=1.0)
    forgotten = TrainSet("forget", QA, items[:1])
    batch = pad_batch(encode_qa_batch(tokenizer, template, [items[0]["question"]], [items[0]["answer"]], 64),
                      tokenizer.pad_token_id)

    def nll() -> float:
        model.eval()
        with torch.no_grad():
            return float(model(**batch).loss)

    train_lm(model, tokenizer, TrainSet("both", QA, items), recipe, reporter, "learn", torch.device("cpu"), 0,
             settings=settings)
    learned = nll()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(15):  # gradient ascent on the item
        opt.zero_grad()
        (-model(**batch).loss).backward()
        opt.step()
    unlearned = nll()
    assert unlearned > learned + 1.0
    # 20 steps planned, finetune.max_steps takes the first 10 (the relearning attack's budget)
    relearn = FinetuneConfig(epochs=20, lr=1e-3, min_lr_ratio=1.0, warmup_steps=0, batch_size=1,
                             weight_decay=0.0, max_grad_norm=1.0, max_steps=10)
    seen = []
    train_lm(model, tokenizer, forgotten, recipe, reporter, "relearn", torch.device("cpu"), 0,
             settings=relearn, on_step_end=seen.append)
    assert seen == list(range(1, 11))
    assert nll() < unlearned - 0.5, (learned, unlearned, nll())


def test_relearning_data_from_a_file_of_records(tmp_path):
    from soulcli.recipe import build_recipe
    from soulcli.workflows.attack import relearn_set

    qa, text, mixed = tmp_path / "qa.jsonl", tmp_path / "text.json", tmp_path / "mixed.jsonl"
    qa.write_text('{"question": "q1", "answer": "a1"}\n{"question": "q2", "answer": "a2"}\n')
    text.write_text('[{"text": "some public text"}]')
    mixed.write_text('{"question": "q1", "answer": "a1"}\n{"text": "t"}\n')
    got = relearn_set(build_recipe({"attack": {"relearn": {"data": str(qa)}}}), tmp_path)
    assert (got.name, got.kind, got.rows) == ("qa.jsonl", QA, [{"question": "q1", "answer": "a1"},
                                                              {"question": "q2", "answer": "a2"}])
    assert relearn_set(build_recipe({"attack": {"relearn": {"data": str(text)}}}), tmp_path).kind == "text"
    with pytest.raises(UserError, match="must hold records that all have 'question' and 'answer'"):
        relearn_set(build_recipe({"attack": {"relearn": {"data": str(mixed)}}}), tmp_path)
