"""evaluate_model end to end on a tiny random Llama, checked against a by-hand recomputation."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest
from scipy import stats

from soulcli.errors import UserError
from soulcli.eval import EvalConfig, load_reference, reference_from_result, save_reference

from tofu_eval_helpers import tofu_eval, tofu_suite

CFG = EvalConfig(batch_size=4, max_new_tokens=8)
# What a reference feeds, without the (slow, unneeded) generations.
REF_CFG = EvalConfig(
    batch_size=4, metrics=("forget_truth_ratio", "forget_quality", "mia_*", "privleak")
)


@pytest.fixture(scope="module")
def full_result(model, tokenizer, template, split_factory):
    return tofu_eval(model, tokenizer, template, split_factory(), CFG)


def _by_hand_metrics(model, splits, score_by_hand, pairwise_auc, k: float) -> dict[str, float]:
    """Every log-probability metric recomputed item by item from the TOFU/MUSE formulas."""

    def nll(q, a):
        return -float(np.mean(score_by_hand(model, q, a)[0]))

    out: dict[str, float] = {}
    for split in ("forget", "retain", "real_authors", "world_facts"):
        probs, ratios = [], []
        for row in splits[split]:
            q = row["question"]
            p_true = math.exp(-nll(q, row["answer"]))
            p_wrong = [math.exp(-nll(q, a)) for a in row["perturbed_answer"]]
            probs.append(
                p_true if split in ("forget", "retain") else p_true / (p_true + sum(p_wrong))
            )
            truth = row["paraphrased_answer"] if split in ("forget", "retain") else row["answer"]
            geo_wrong = math.exp(sum(math.log(p) for p in p_wrong) / len(p_wrong))
            ratios.append(geo_wrong / math.exp(-nll(q, truth)))
        out[f"{split}_prob"] = sum(probs) / len(probs)
        if split == "forget":
            out[f"{split}_truth_ratio"] = sum(min(r, 1 / r) for r in ratios) / len(ratios)
        else:
            out[f"{split}_truth_ratio"] = sum(max(0.0, 1 - r) for r in ratios) / len(ratios)

    def member_scores(split):
        scores = {"loss": [], "zlib": [], "mink": [], "minkpp": []}
        for row in splits[split]:
            lp, _, mu, sigma = score_by_hand(model, row["question"], row["answer"])
            scores["loss"].append(lp.mean())
            scores["zlib"].append(lp.mean() / len(zlib.compress(row["answer"].encode("utf-8"))))
            lp, mu, sigma = lp[:-1], mu[:-1], sigma[:-1]  # Min-K% / Min-K%++ without the EOS
            lowest = max(1, int(len(lp) * k))
            scores["mink"].append(np.sort(lp)[:lowest].mean())
            scores["minkpp"].append(np.sort((lp - mu) / sigma)[:lowest].mean())
        return scores

    members, nonmembers = member_scores("forget"), member_scores("holdout")
    for attack in members:
        out[f"mia_{attack}_auc"] = pairwise_auc(members[attack], nonmembers[attack])
    es, em = [], []
    for row in splits["forget"]:
        hits = list(score_by_hand(model, row["question"], row["answer"])[1])[:-1]  # no EOS
        # open-unlearning's search over k = 0..n-1, left at n-1 when no suffix matches
        es.append(1 - next((i for i in range(len(hits)) if all(hits[i:])), len(hits) - 1) / len(hits))
        em.append(sum(hits) / len(hits))
    out["extraction_strength"] = sum(es) / len(es)
    out["exact_memorization"] = sum(em) / len(em)
    return out


def test_every_metric_is_reported_in_the_eval_json_layout(full_result, splits, template):
    metrics = full_result["metrics"]
    assert list(metrics) == list(tofu_suite(template, CFG))
    assert all("value" in entry for entry in metrics.values())
    for split in ("forget", "retain", "real_authors", "world_facts"):
        for kind in ("prob", "truth_ratio", "rougeL_recall"):
            assert len(metrics[f"{split}_{kind}"]["per_item"]) == len(splits[split])
        generations = metrics[f"{split}_rougeL_recall"]["generations"]
        assert len(generations) == len(splits[split]) and all(
            isinstance(g, str) for g in generations
        )
    for name in ("extraction_strength", "exact_memorization"):
        assert len(metrics[name]["per_item"]) == len(splits["forget"])
    for name in ("forget_quality", "privleak"):
        assert metrics[name]["value"] is None
        assert "reference" in metrics[name]["unavailable"]
    json.dumps(full_result, allow_nan=False)  # strict JSON: no NaN or infinities


def test_values_match_a_by_hand_recomputation(
    full_result, model, splits, score_by_hand, pairwise_auc
):
    metrics = full_result["metrics"]
    expected = _by_hand_metrics(model, splits, score_by_hand, pairwise_auc, CFG.mink_k)
    for name, value in expected.items():
        assert metrics[name]["value"] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    utility = metrics["model_utility"]
    parts = [
        metrics[f"{s}_{m}"]["value"]
        for s in ("retain", "real_authors", "world_facts")
        for m in ("prob", "rougeL_recall", "truth_ratio")
    ]
    assert list(utility["components"].values()) == parts
    hmean = 0.0 if min(parts) == 0 else 9 / sum(1 / v for v in parts)
    assert utility["value"] == pytest.approx(hmean, abs=1e-9)


def test_rouge_uses_the_stored_generations(full_result, splits):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    entry = full_result["metrics"]["retain_rougeL_recall"]
    for row, gen, value in zip(splits["retain"], entry["generations"], entry["per_item"]):
        assert value == scorer.score(row["answer"], gen)["rougeL"].recall


def test_reference_enables_forget_quality_and_privleak(
    retain_model, model, tokenizer, template, splits, tmp_path
):
    retain_result = tofu_eval(retain_model, tokenizer, template, splits, REF_CFG)
    # A reference is JSON: cache it, or use the retain model's eval.json directly.
    cached = load_reference(
        save_reference(tmp_path / "ref.json", reference_from_result(retain_result))
    )
    (tmp_path / "eval.json").write_text(json.dumps(retain_result))
    from_eval_json = load_reference(tmp_path / "eval.json")
    assert cached == from_eval_json
    result = tofu_eval(model, tokenizer, template, splits, REF_CFG, reference=cached)
    metrics = result["metrics"]
    ours = metrics["forget_truth_ratio"]["per_item"]
    theirs = retain_result["metrics"]["forget_truth_ratio"]["per_item"]
    assert metrics["forget_quality"]["value"] == pytest.approx(
        stats.ks_2samp(ours, theirs).pvalue, abs=1e-12
    )
    auc, ref_auc = (
        metrics["mia_mink_auc"]["value"],
        retain_result["metrics"]["mia_mink_auc"]["value"],
    )
    assert metrics["privleak"]["value"] == pytest.approx(
        ((1 - auc) - (1 - ref_auc)) / (1 - ref_auc) * 100
    )
    assert set(metrics["privleak"]["by_attack"]) == {"loss", "zlib", "mink", "minkpp"}
    # The retain model against its own reference: identical distributions, no leak.
    self_ref = tofu_eval(
        retain_model, tokenizer, template, splits, REF_CFG, reference=retain_result
    )
    assert self_ref["metrics"]["forget_quality"]["value"] == pytest.approx(1.0)
    assert self_ref["metrics"]["privleak"]["value"] == pytest.approx(0.0)


def test_reference_from_other_items_is_refused(full_result, model, tokenizer, template, splits):
    splits["forget"] = splits["forget"][1:] + splits["forget"][:1]
    result = tofu_eval(model, tokenizer, template, splits, REF_CFG, reference=full_result)
    for name in ("forget_quality", "privleak"):
        assert result["metrics"][name]["value"] is None
        assert "different 'forget' split" in result["metrics"][name]["unavailable"]


def test_each_pair_is_scored_once_and_selection_skips_unneeded_work(
    model, tokenizer, template, splits
):
    splits["forget"][0]["paraphrased_answer"] = splits["forget"][0]["answer"]  # same pair twice
    cfg = EvalConfig(batch_size=4, metrics=("forget_prob", "forget_truth_ratio", "mia_*"))
    passes, whole = [], []  # the decoder body's passes: (rows, tokens, with a prompt's cache)
    hooks = [model.get_decoder().register_forward_hook(
        lambda mod, args, kwargs, out: passes.append(
            (kwargs["input_ids"].shape[0], kwargs["input_ids"].numel(), kwargs.get("cache") is not None)),
        with_kwargs=True), model.register_forward_hook(lambda *a: whole.append(1))]
    try:
        result = tofu_eval(model, tokenizer, template, splits, cfg)
    finally:
        for hook in hooks:
            hook.remove()
    distinct = {(r["question"], r["answer"]) for r in splits["forget"] + splits["holdout"]}
    for row in splits["forget"]:
        distinct |= {
            (row["question"], a) for a in [row["paraphrased_answer"], *row["perturbed_answer"]]
        }
    questions = {q for q, _ in distinct}
    # the one-sequence check of the output layer: the model once (its body inside) and its body
    assert len(whole) == 1 and [n for n, _, _ in passes[:2]] == [1, 1]
    scoring = passes[2:]
    # each pair once, after its prompt's pass; a prompt's candidates are not split across batches
    # unless they are more than a batch (4): a prompt in ceil(candidates / 4) batches
    assert sum(n for n, _, cached in scoring if cached) == len(distinct) == result["stats"]["pairs_scored"] == 29
    prompts = sum(n for n, _, cached in scoring if not cached)
    per_question = [sum(q == p for p, _ in distinct) for q in questions]
    assert prompts == sum(-(-n // 4) for n in per_question) and len(questions) == 10
    stats = result["stats"]
    assert stats["score_passes"] == len(scoring) and stats["scored_logits"] == "answer positions"
    assert stats["tokens_scored"] == sum(t for _, t, _ in scoring)
    assert result["stats"]["answers_generated"] == 0
    assert list(result["metrics"]) == [
        "forget_prob",
        "forget_truth_ratio",
        "mia_loss_auc",
        "mia_zlib_auc",
        "mia_mink_auc",
        "mia_minkpp_auc",
    ]


def test_missing_data_makes_metrics_unavailable_with_a_reason(model, tokenizer, template, splits):
    del splits["holdout"]
    splits["world_facts"] = []
    del splits["retain"][1]["perturbed_answer"]
    cfg = EvalConfig(batch_size=8, max_new_tokens=2)
    result = tofu_eval(model, tokenizer, template, splits, cfg)["metrics"]
    assert result["mia_loss_auc"]["unavailable"] == "no 'holdout' split given"
    assert result["world_facts_prob"]["unavailable"] == "no 'world_facts' split given"
    assert "row 1 has no 'perturbed_answer'" in result["retain_truth_ratio"]["unavailable"]
    assert result["retain_prob"]["value"] is not None  # needs only the answers
    assert result["model_utility"]["unavailable"].startswith("needs retain_truth_ratio")
    assert result["forget_prob"]["value"] is not None


def test_user_mistakes_raise_user_errors(model, tokenizer, template, splits):
    with pytest.raises(UserError, match="did you mean 'forget_prob'"):
        tofu_eval(model, tokenizer, template, splits, EvalConfig(metrics=("forget_prb",)))
    with pytest.raises(UserError, match="batch_size.*mink_k"):
        EvalConfig(batch_size=0, mink_k=1.5)
    splits["forget10"] = splits.pop("forget")
    with pytest.raises(UserError, match="unknown evaluation split 'forget10'"):
        tofu_eval(model, tokenizer, template, splits, CFG)
    with pytest.raises(UserError, match="none of the metrics a reference needs"):
        reference_from_result({"metrics": {"forget_prob": {"value": None}}})
    with pytest.raises(UserError, match="none of the metrics a reference needs .forget_truth_ratio"):
        reference_from_result({"metrics": {"forget_prob": {"value": 0.1}}}, ["forget_truth_ratio"])


def test_a_peft_wrapped_model_evaluates_like_its_base(
    full_result, model, tokenizer, template, splits
):
    import copy

    from peft import LoraConfig, get_peft_model

    # LoRA starts with B = 0, so the wrapped model computes exactly what the base model does.
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    wrapped = get_peft_model(copy.deepcopy(model), lora)
    names = ("forget_prob", "forget_rougeL_recall", "mia_minkpp_auc", "exact_memorization")
    cfg = EvalConfig(batch_size=4, max_new_tokens=8, metrics=names)
    result = tofu_eval(wrapped, tokenizer, template, splits, cfg)["metrics"]
    for name in names:
        assert result[name]["value"] == pytest.approx(
            full_result["metrics"][name]["value"], abs=1e-6
        )
    assert (
        result["forget_rougeL_recall"]["generations"]
        == full_result["metrics"]["forget_rougeL_recall"]["generations"]
    )


def test_progress_announces_each_stage_then_counts_batches(model, tokenizer, template, splits):
    calls = []
    cfg = EvalConfig(
        batch_size=8, max_new_tokens=2, metrics=("retain_prob", "retain_rougeL_recall")
    )
    tofu_eval(model, tokenizer, template, splits, cfg, progress=lambda *a: calls.append(a))
    n = len(splits["retain"])
    assert calls == [
        ("scoring", 0, n),
        ("scoring", n, n),
        ("generating", 0, n),
        ("generating", n, n),
    ]


def test_max_items_evaluates_each_splits_first_items_and_says_so(full_result, model, tokenizer, template, splits):
    """eval.max_items N: exactly the evaluation of the splits' first N records, recorded as
    limited (items evaluated of those given), so it is never read as a full one."""
    cfg = EvalConfig(batch_size=4, max_new_tokens=8, max_items=2)
    limited = tofu_eval(model, tokenizer, template, splits, cfg)
    by_hand = tofu_eval(model, tokenizer, template, {k: rows[:2] for k, rows in splits.items()}, CFG)
    assert limited["limited"] is True and by_hand["limited"] is False and full_result["limited"] is False
    for name, rows in splits.items():
        assert limited["splits"][name]["items"] == 2 < len(rows) == limited["splits"][name]["of"]
        assert limited["splits"][name]["fingerprint"] == by_hand["splits"][name]["fingerprint"]
    assert limited["eval_config"]["max_items"] == 2
    values = {k: m["value"] for k, m in limited["metrics"].items()}
    assert values == {k: m["value"] for k, m in by_hand["metrics"].items()}
    assert values["forget_prob"] != full_result["metrics"]["forget_prob"]["value"]
    assert len(limited["metrics"]["forget_prob"]["per_item"]) == 2
    # a limit at or above every split's size cuts nothing: a full evaluation
    whole = tofu_eval(model, tokenizer, template, splits,
                      EvalConfig(batch_size=4, max_new_tokens=8, metrics=("forget_prob",),
                                 max_items=max(len(r) for r in splits.values())))
    assert whole["limited"] is False
    # (other pairs share its batches here, so float noise only)
    assert whole["metrics"]["forget_prob"]["value"] == pytest.approx(full_result["metrics"]["forget_prob"]["value"],
                                                                     rel=1e-6)
