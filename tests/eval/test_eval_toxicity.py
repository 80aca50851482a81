"""The detox metrics on hand-built cases: which classifier output is "toxic" (toxic-bert's
multi-label sigmoid, a two-label softmax), the toxic rate from a fake classifier's known scores,
and corpus token perplexity against a computation by hand on a fake score table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from soulcli.errors import UserError
from soulcli.eval import EvalConfig
from soulcli.eval.kinds import toxicity
from soulcli.eval.kinds.toxicity import CLASSIFIER_SPLIT
from soulcli.eval.metric import Requests, Results, Unavailable
from soulcli.eval.scoring import TokenScores
from soulcli.models import classifier as C
from soulcli.models.builtin import train_tokenizer
from soulcli.tasks import DetoxTask, DetoxTaskData

SUITE = DetoxTask(DetoxTaskData()).suite(EvalConfig(toxic_threshold=0.6))


def _fixed_bert(biases, id2label, problem_type):
    """A tiny BERT whose logits are exactly ``biases`` for every input (classifier weight 0)."""
    tok = train_tokenizer(["some words to learn a vocabulary from"], vocab_size=300, min_frequency=1)
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=len(tok), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, num_labels=len(biases), id2label=id2label,
                     label2id={v: k for k, v in id2label.items()}, problem_type=problem_type,
                     pad_token_id=tok.pad_token_id)
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(biases))
    return model, tok


def test_toxic_bert_convention_is_the_sigmoid_of_the_toxic_label():
    labels = {0: "severe_toxic", 1: "toxic", 2: "insult"}  # toxic-bert's kind of labels, toxic not first
    model, tok = _fixed_bert([3.0, 0.4, -1.0], labels, "multi_label_classification")
    assert C.toxic_output(model.config) == (1, True)
    got = C.toxic_probabilities(model, tok, ["some words", "", "to learn"])
    assert got == pytest.approx([1 / (1 + math.exp(-0.4)), 0.0, 1 / (1 + math.exp(-0.4))], abs=1e-6)


def test_a_two_label_softmax_classifier_gives_the_positive_label_probability():
    model, tok = _fixed_bert([0.5, 1.5], {0: "LABEL_0", 1: "LABEL_1"}, "single_label_classification")
    assert C.toxic_output(model.config) == (1, False)
    p = math.exp(1.5) / (math.exp(0.5) + math.exp(1.5))
    assert C.toxic_probabilities(model, tok, ["words"]) == pytest.approx([p], abs=1e-6)
    named, _ = _fixed_bert([0.5, 1.5, 0.0], {0: "toxic", 1: "neutral", 2: "other"}, "single_label_classification")
    assert C.toxic_output(named.config) == (0, False)
    unnamed, _ = _fixed_bert([0.0, 0.0, 0.0], {0: "a", 1: "b", 2: "c"}, "single_label_classification")
    with pytest.raises(UserError, match="none is called 'toxic'"):
        C.toxic_output(unnamed.config)


def test_toxic_rate_counts_scores_above_the_threshold(monkeypatch):
    metric = SUITE["toxic_rate"]
    assert metric.threshold == 0.6 and metric.higher_is_better is False
    rows = [{"prompt": f"q{i}"} for i in range(4)]
    data = {"prompts": rows, CLASSIFIER_SPLIT: [{"path": "some/classifier"}]}
    req = Requests()
    plan = metric.plan(data, req)
    assert [g.prompt.prefix for g in req.generations] == [f"Question: q{i}\nAnswer:" for i in range(4)]
    assert {g.max_new_tokens for g in req.generations} == {48}
    known = {"a": 0.9, "b": 0.6, "c": 0.61, "d": 0.1}  # 0.6 is not above the threshold
    loaded = []
    monkeypatch.setattr("soulcli.models.loading.load_classifier",
                        lambda path, device, trust: loaded.append(path) or ("model", "tok"))
    monkeypatch.setattr(C, "toxic_probabilities", lambda model, tok, texts: [known[t] for t in texts])
    res = Results([], ["a", "b", "c", "d"], None, "cpu")
    entry = metric.compute(plan, res, {}, None, data)
    assert entry["per_item"] == [1.0, 0.0, 1.0, 0.0] and entry["value"] == 0.5
    assert entry["scores"] == [0.9, 0.6, 0.61, 0.1] and entry["generations"] == ["a", "b", "c", "d"]
    assert entry["mean_score"] == pytest.approx(2.21 / 4)
    metric.compute(plan, res, {}, None, data)
    assert loaded == ["some/classifier"]  # loaded once per metric object
    with pytest.raises(Unavailable, match="set data.classifier"):
        metric.plan({"prompts": rows, CLASSIFIER_SPLIT: [{"path": None}]}, Requests())


def test_perplexity_is_the_corpus_token_mean_not_the_mean_of_texts():
    metric = SUITE["utility_ppl"]
    rows = [{"text": "one"}, {"text": "two words"}]
    req = Requests()
    plan = metric.plan({"benign": rows}, req)
    assert [(p.prefix, p.continuation, p.eos) for p in req.pairs] == [("", "one", False), ("", "two words", False)]
    table = {"one": [-1.0], "two words": [-2.0, -0.5, -0.5]}
    scores = [TokenScores(np.asarray(table[p.continuation]), np.zeros(1, bool)) for p in req.pairs]
    entry = metric.compute(plan, Results(scores, []), {}, None, {"benign": rows})
    assert entry["value"] == pytest.approx(math.exp(4.0 / 4))  # sum NLL 1 + 3 over 4 tokens
    assert entry["per_item"] == pytest.approx([math.exp(1.0), math.exp(1.0)])
    assert entry["tokens"] == 4
