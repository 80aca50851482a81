"""Reference quantities: computed once from the starting model, cached per item, reused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from soulcli.objectives import UnlearnBatch, build_objective


class CountingModel(nn.Module):
    """Wraps a model and counts the rows it is asked to score."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows = 0

    def forward(self, input_ids, attention_mask):
        self.rows += input_ids.shape[0]
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_npo_reference_is_the_starting_models_likelihood_per_item(make_llama, make_batches):
    model, batches = make_llama(), make_batches(2)
    objective = build_objective("npo")
    objective.setup(model, batches, None, "k")
    for batch in batches:
        with torch.no_grad():
            logits = model(
                input_ids=batch.forget["input_ids"], attention_mask=batch.forget["attention_mask"]
            ).logits
        target = batch.forget["labels"][:, 1:]  # log_softmax + gather, not the library's path
        picked = torch.log_softmax(logits[:, :-1], -1).gather(-1, target.clamp_min(0)[..., None])
        expected = (picked[..., 0] * (target != -100)).sum(-1)
        cached = torch.stack(objective.cache.rows("forget_logp", batch.forget))
        torch.testing.assert_close(cached, expected, rtol=1e-5, atol=1e-5)
    # no second model: the objective holds tensors only, no module
    assert not any(isinstance(v, nn.Module) for v in vars(objective).values())


def test_training_does_not_change_the_reference(make_llama, make_batches):
    model, batches = make_llama(), make_batches(1)
    objective = build_objective("dpo")
    objective.setup(model, batches, None, "k")
    before = torch.stack(objective.cache.rows("refusal_logp", batches[0].forget_refusal)).clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = objective(model, batches[0]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = torch.stack(objective.cache.rows("refusal_logp", batches[0].forget_refusal))
    assert torch.equal(before, after)


def test_each_item_is_scored_once_even_when_batches_repeat(make_llama, make_batches):
    model = CountingModel(make_llama())
    batches = make_batches(2, size=3)
    objective = build_objective("npo", retain_weight=0.0)
    objective.setup(model, batches + batches, None, "k")  # two epochs
    assert model.rows == 6 and objective.reference_computed == 6


def test_cache_file_is_written_once_and_reused(make_llama, make_batches, tmp_path):
    batches = make_batches(2)
    first = build_objective("kl", kl_top_k=8)
    first.setup(make_llama(), batches, tmp_path, "llama-abc")
    assert (tmp_path / "kl-llama-abc.pt").is_file()
    assert first.reference_computed == 6

    model = CountingModel(make_llama())
    second = build_objective("kl", kl_top_k=8)
    second.setup(model, batches, tmp_path, "llama-abc")
    assert model.rows == 0 and second.reference_computed == 0
    for a, b in zip(
        first.cache.rows("retain_kl", batches[0].retain),
        second.cache.rows("retain_kl", batches[0].retain),
    ):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_other_settings_or_other_tokens_are_recomputed(make_llama, make_batches, tmp_path):
    batches = make_batches(1)
    build_objective("kl", kl_top_k=8).setup(make_llama(), batches, tmp_path, "key")

    model = CountingModel(make_llama())
    build_objective("kl", kl_top_k=4).setup(model, batches, tmp_path, "key")
    assert model.rows == 3  # another top-k: the file is stale

    changed = make_batches(1, seed=9)  # same indices, other tokens, same key
    model = CountingModel(make_llama())
    objective = build_objective("kl", kl_top_k=4)
    objective.setup(model, changed, tmp_path, "key")
    assert model.rows == 3
    objective(make_llama(), changed[0])


def test_a_step_on_an_item_setup_never_saw_fails(make_llama, make_batches):
    model, batches = make_llama(), make_batches(2)
    objective = build_objective("npo")
    objective.setup(model, batches[:1], None, "k")
    with pytest.raises(RuntimeError, match="setup"):
        objective(model, batches[1])


def test_setup_runs_in_eval_mode_and_restores_training_flags(make_llama, make_batches):
    model, batches = make_llama(), make_batches(1)
    model.train()
    model.lm_head.eval()
    seen = []
    model.model.register_forward_hook(lambda m, a, o: seen.append(m.training))
    build_objective("npo").setup(model, batches, None, "k")
    assert seen and not any(seen)
    assert model.training and not model.lm_head.training


def test_objectives_without_reference_need_no_setup(make_llama, make_batches):
    for name in ("ga", "graddiff", "po", "simnpo"):
        objective = build_objective(name)
        assert not objective.needs_setup
        model = CountingModel(make_llama())
        objective.setup(model, make_batches(1), None, "k")
        assert model.rows == 0
    assert build_objective("graddiff", retain_loss="kl").needs_setup
    assert not build_objective("rmu", retain_weight=0.0).needs_setup


def test_setup_needs_the_fields_it_references(make_llama, make_batches):
    batch = make_batches(1)[0]
    with pytest.raises(ValueError, match="forget_refusal"):
        build_objective("dpo").setup(
            make_llama(), [UnlearnBatch(batch.forget, batch.retain)], None, "k"
        )


def test_dpo_refuses_refusals_in_another_order(make_llama, make_batches):
    model, (batch,) = make_llama(), make_batches(1)
    objective = build_objective("dpo")
    objective.setup(model, [batch], None, "k")
    flipped = {k: v.flip(0) for k, v in batch.forget_refusal.items()}
    with pytest.raises(ValueError, match="same order"):
        objective(model, UnlearnBatch(batch.forget, batch.retain, flipped))
