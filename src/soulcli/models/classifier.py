"""Toxicity classifiers: reading any Hugging Face sequence classifier's toxic probability, and
the built-in one (a tiny BERT trained on the built-in detoxification data's responses).

Which output is "toxic" (:func:`toxic_output`):

* a label named ``toxic`` (any case) in ``config.id2label``, scored with a **sigmoid** when the
  classifier is multi-label (``config.problem_type == "multi_label_classification"``, or a
  single output): ``unitary/toxic-bert``'s convention, SOUL's classifier, whose six labels
  (toxic, severe_toxic, obscene, threat, insult, identity_hate) are independent sigmoids;
* otherwise a **softmax** over the labels, the probability of the ``toxic`` label, or of label 1
  for a two-label classifier without one (``LABEL_0`` / ``LABEL_1``: 1 the positive class).

SOUL calls the ``text-classification`` pipeline and thresholds the *top* label's score, which
for toxic-bert is nearly always ``toxic``; soulcli reads the ``toxic`` output itself.
"""

from __future__ import annotations

from typing import Sequence

import torch

from soulcli.errors import UserError

TOXIC = "toxic"


def toxic_output(config) -> tuple[int, bool]:
    """``(index of the toxic output, sigmoid?)`` for a classifier's config (rules above)."""
    labels = {int(i): str(name) for i, name in (config.id2label or {}).items()}
    named = [i for i, name in labels.items() if name.lower() == TOXIC]
    n = int(config.num_labels)
    sigmoid = n == 1 or config.problem_type == "multi_label_classification"
    if named:
        return named[0], sigmoid
    if n == 1:
        return 0, True
    if n == 2 and not sigmoid:
        return 1, False
    raise UserError(f"the toxicity classifier has labels {sorted(labels.values())} and none is called "
                    f"'{TOXIC}'; use a classifier with a '{TOXIC}' label (e.g. unitary/toxic-bert) or two labels")


@torch.inference_mode()
def toxic_probabilities(model, tokenizer, texts: Sequence[str], batch_size: int = 32) -> list[float]:
    """The classifier's toxic probability of each text (:func:`toxic_output`), in order. Texts
    are cut at the classifier's longest input; a text of no tokens (an empty generation) scores 0."""
    index, sigmoid = toxic_output(model.config)
    device = next(model.parameters()).device
    limit = min(int(getattr(model.config, "max_position_embeddings", 512) or 512),
                int(getattr(tokenizer, "model_max_length", 512) or 512), 512)
    out: list[float] = [0.0] * len(texts)
    todo = [i for i, t in enumerate(texts) if tokenizer(t, add_special_tokens=False)["input_ids"]]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        batch = tokenizer([texts[i] for i in chunk], padding=True, truncation=True, max_length=limit,
                          return_tensors="pt").to(device)
        logits = model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}).logits.float()
        probs = torch.sigmoid(logits[:, index]) if sigmoid else torch.softmax(logits, -1)[:, index]
        for i, p in zip(chunk, probs.tolist()):
            out[i] = float(p)
    return out


def build_classifier(tokenizer, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2,
                     max_position_embeddings: int = 256, seed: int = 0):
    """A randomly initialised tiny ``BertForSequenceClassification`` with one sigmoid output
    labelled ``toxic`` (toxic-bert's convention, so both are read by the same code)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
                        num_attention_heads=num_heads, intermediate_size=2 * hidden_size,
                        max_position_embeddings=max_position_embeddings, pad_token_id=tokenizer.pad_token_id,
                        num_labels=1, id2label={0: TOXIC}, label2id={TOXIC: 0},
                        problem_type="multi_label_classification")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return BertForSequenceClassification(config)


def train_classifier(texts: Sequence[str], toxic: Sequence[bool], *, epochs: int = 6, lr: float = 3e-3,
                     batch_size: int = 16, seed: int = 0):
    """Train the built-in classifier on ``texts`` labelled ``toxic``: its own byte-level BPE
    tokenizer (:func:`soulcli.models.builtin.train_tokenizer`), then binary cross-entropy with
    AdamW, batches shuffled by ``seed``. Returns ``(model, tokenizer)``, the model in eval mode."""
    from soulcli.models.builtin import train_tokenizer

    tokenizer = train_tokenizer(texts, vocab_size=512, bos=False)
    model = build_classifier(tokenizer, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    labels = torch.tensor([float(t) for t in toxic])
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with torch.random.fork_rng():  # dropout draws from the global generator: seed it, leave it as it was
        torch.manual_seed(seed)
        for _ in range(epochs):
            for chunk in torch.randperm(len(texts), generator=generator).split(batch_size):
                batch = tokenizer([texts[i] for i in chunk.tolist()], padding=True, truncation=True,
                                  max_length=model.config.max_position_embeddings, return_tensors="pt")
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[chunk])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return model.eval(), tokenizer


def accuracy(model, tokenizer, texts: Sequence[str], toxic: Sequence[bool], threshold: float = 0.5) -> float:
    """Share of ``texts`` the classifier labels right (toxic probability > ``threshold``)."""
    probs = toxic_probabilities(model, tokenizer, texts)
    return sum((p > threshold) == bool(t) for p, t in zip(probs, toxic)) / len(texts)


__all__ = ["TOXIC", "accuracy", "build_classifier", "toxic_output", "toxic_probabilities", "train_classifier"]
