"""Batched teacher-forced scoring: one forward pass per (prefix, continuation) pair, kept per token.

Every log-probability metric (probability, truth ratio, the membership attacks, extraction
strength, exact memorisation) is a function of what one teacher-forced pass over
``prefix + continuation [+ EOS]`` (a question's prompt and an answer candidate, a prompt and
its continuation, a raw text) yields at each continuation token:

* the log-probability of the answer token (fp32, via ``F.cross_entropy``),
* whether it is the argmax of the next-token distribution,
* optionally the mean and standard deviation of ``log p(z)`` under that distribution (Min-K%++).

:func:`score_pairs` computes these once per distinct pair, the pairs that share a prompt (a
question's answer candidates) batched together so the prompt goes through the model once per
batch (its KV cache copied to each candidate), and hands them back in the caller's order. Only
the answer positions' final hidden states go through the output layer, in chunks
(:func:`position_scores`), so no ``[batch, length, vocab]`` logits exist and memory stays one
chunk's whatever the vocabulary.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from soulcli.data.encode import (
    IGNORE_INDEX,
    EncodedItem,
    check_special_tokens,
    encode_pair,
    eval_mode,
    pad_batch,
    pad_id,
)

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Pair:
    """One teacher-forced sequence: ``prefix`` conditions, ``continuation`` is scored token by
    token; ``eos`` appends the tokenizer's EOS to the continuation (an answer's end, scored);
    ``specials``: a template's strings, where special-token text is a special token."""

    prefix: str
    continuation: str
    eos: bool = True
    specials: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenScores:
    """Per-continuation-token results of one teacher-forced pass (including the EOS, if any)."""

    logprobs: np.ndarray  # float64 [n]: log p(y_t | question, y_<t)
    hits: np.ndarray  # bool [n]: argmax of the next-token distribution == y_t
    mu: np.ndarray | None = None  # float64 [n]: E_z[log p(z)]
    sigma: np.ndarray | None = None  # float64 [n]: std_z[log p(z)]
    eos: bool = False  # the last token is the closing EOS (not cut off by max_length)
    truncated: bool = False  # the sequence was cut to max_length

    @property
    def nll(self) -> float:
        """Mean answer-token negative log-likelihood (TOFU's per-item loss, EOS included)."""
        return float(-self.logprobs.mean())

    @property
    def content(self) -> slice:
        """The continuation's own tokens: all but an appended EOS. open-unlearning's Min-K%,
        Min-K%++, exact memorisation and extraction strength leave the EOS prediction out
        (``tokenwise_logprobs`` / ``tokenwise_vocab_logprobs`` in its
        ``src/evals/metrics/utils.py`` drop the last label); a continuation that is nothing but
        its EOS keeps it, so every item has a value."""
        n = len(self.logprobs)
        return slice(0, n - 1 if self.eos and n > 1 else n)

def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices sorted longest first (stable), so batches hold similar lengths and the largest
    batch, the one that would run out of memory, comes first."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def prefix_order(items: Sequence[EncodedItem], splits: Sequence[int]) -> list[int]:
    """:func:`length_order`, with the pairs that share a prefix (``input_ids[:split]``) kept
    together where their longest one comes: batches hold few distinct prefixes."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in length_order([len(it.input_ids) for it in items]):
        groups.setdefault(tuple(items[i].input_ids[:splits[i]]), []).append(i)
    return [i for members in groups.values() for i in members]


def batches(
    order: list[int], batch_size: int, stage: str, progress: Progress | None,
    keys: Sequence | None = None,
) -> Iterator[list[int]]:
    """Consecutive chunks of ``order`` of at most ``batch_size``; reports ``(stage, 0, n)``
    first, then each chunk done. With ``keys`` (one per index), a run of consecutive indices
    with one key is not split across chunks unless it alone is longer than ``batch_size``
    (then it fills chunks of its own): a prompt's answer candidates share one prefix pass."""
    if progress is not None:
        progress(stage, 0, len(order))
    runs: list[list[int]] = []
    for i in order:
        if keys is not None and runs and keys[runs[-1][-1]] == keys[i] and len(runs[-1]) < batch_size:
            runs[-1].append(i)
        else:
            runs.append([i])
    chunk: list[int] = []
    done = 0
    for run in runs:
        if chunk and len(chunk) + len(run) > batch_size:
            yield chunk
            done += len(chunk)
            if progress is not None:
                progress(stage, done, len(order))
            chunk = []
        chunk += run
    if chunk:
        yield chunk
        if progress is not None:
            progress(stage, done + len(chunk), len(order))


# A forward pass's fixed cost, in token positions, when a batch's continuations are split into
# passes of similar lengths (:func:`tail_passes`): about a pass's overhead on the built-in model
# on CPU (3-4 ms at ~75 us a position); a larger model's positions cost more, so fewer passes
# would pay, but the split only ever trades padding for passes.
PASS_COST = 48


def tail_passes(lengths: Sequence[int], pass_cost: int = PASS_COST) -> list[list[int]]:
    """The rows of a batch (indices into ``lengths``, its continuations' token counts) split into
    passes, each padded to its longest row: the split of the rows sorted longest first that
    minimises positions pushed + ``pass_cost`` per pass (exact, by dynamic programming over the
    cut points). Rows of length 0 need no pass and are in none."""
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])
    n = len(order)
    best = [0] + [None] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # rows order[i:j] in one pass, padded to order[i]'s length
            cost = best[i] + lengths[order[i]] * (j - i) + pass_cost
            if best[j] is None or cost < best[j]:
                best[j], cut[j] = cost, i
    out = []
    while n:
        out.append(order[cut[n]:n])
        n = cut[n]
    return out[::-1]


# Variance below this is treated as this (a near one-hot distribution); keeps z finite. The
# floor open-unlearning's Min-K%++ (src/evals/metrics/mia/min_k_plus_plus.py) clamps it to.
_MIN_VARIANCE = 1e-6
# Answer positions per chunk: about this many logits (x 8 bytes for the float64 statistics), so
# a chunk's temporaries stay near 32 MB whatever the vocabulary.
CHUNK_ELEMENTS = 1 << 22

Head = Callable[[torch.Tensor], torch.Tensor]


def _distribution_stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of ``log p(z)`` for ``z ~ p = softmax(logits)``, rows of ``[N, V]``, in
    float64 (Zhang et al., 2024, Min-K%++ eq. 2: ``mu = E_z log p(z)``, ``sigma^2 = E_z (log
    p(z) - mu)^2``), the variance at least :data:`_MIN_VARIANCE`."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    p = logp.exp()
    mu = (p * logp).sum(-1)
    var = (p * (logp - mu.unsqueeze(-1)).square()).sum(-1)
    return mu, var.clamp_min(_MIN_VARIANCE).sqrt()


def position_scores(
    states: torch.Tensor, index: torch.Tensor, targets: torch.Tensor, stats: torch.Tensor,
    head: Head | None = None, vocab: int | None = None, chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Log-probability of ``targets[i]`` (fp32, ``F.cross_entropy``), argmax hit and, where
    ``stats[i]`` is set, Min-K%++'s ``mu``/``sigma``, for each answer position ``i``, whose
    row of ``states`` is ``index[i]``: its logits (``head`` None) or its final hidden state,
    which ``head`` (the model's output layer, ``vocab`` logits) turns into logits.

    Positions go through in chunks of about ``chunk_elements`` logits, so no full-vocabulary
    tensor (the logits, a log-softmax, a float64 copy) is ever larger than one chunk: at a 128k
    vocabulary a batch's answer logits alone would be a gigabyte. Each position's numbers are
    computed from its own row exactly as in one pass, so chunking changes no value.
    ``mu``/``sigma`` are 0 / 1 where ``stats`` is unset (and ``None`` if it is set nowhere).
    """
    n, device = len(targets), states.device
    want_stats = bool(stats.any())
    logprobs = torch.empty(n, dtype=torch.float32, device=device)
    hits = torch.empty(n, dtype=torch.bool, device=device)
    mu = torch.zeros(n, dtype=torch.float64, device=device) if want_stats else None
    sigma = torch.ones(n, dtype=torch.float64, device=device) if want_stats else None
    step = max(1, chunk_elements // (vocab or states.shape[-1]))
    for start in range(0, n, step):
        sl = slice(start, start + step)
        picked = states[index[sl]]
        picked = picked if head is None else head(picked)
        picked = picked.to(torch.promote_types(picked.dtype, torch.float32))
        logprobs[sl] = -F.cross_entropy(picked, targets[sl], reduction="none")
        hits[sl] = picked.argmax(-1) == targets[sl]
        keep = stats[sl]
        if want_stats and bool(keep.any()):
            where = torch.arange(start, start + len(keep), device=device)[keep]
            mu[where], sigma[where] = _distribution_stats(picked[keep])
    return logprobs, hits, mu, sigma


@dataclass(frozen=True)
class Scored:
    """What :func:`score_pairs` returns: the scores, in the pairs' order, and what they cost."""

    scores: list[TokenScores]
    tokens: int  # token positions pushed through the model, padding included
    passes: int  # forward passes
    logits: str  # "answer positions" (only those through the output layer), or "full: <why>"


@dataclass(frozen=True)
class _Forward:
    """How a batch goes through the model: ``body`` returns final hidden states that ``head``
    turns into logits (``head`` None: ``body`` is the model itself, returning full logits)."""

    body: torch.nn.Module
    head: Head | None
    vocab: int  # logits per position
    cache_name: str  # the forward's KV-cache argument: "cache" (transformers 5) or "past_key_values"

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 cache=None, keep_cache: bool = False, last_only: bool = False):
        """``last_only``: only the last position is wanted (generation), so the full-logits
        path computes that position's logits alone (``logits_to_keep=1``), never ``[B, T, V]``."""
        extra = {self.cache_name: cache} if cache is not None else {}
        if last_only and self.head is None:
            extra["logits_to_keep"] = 1
        out = self.body(input_ids=ids, attention_mask=mask, position_ids=positions,
                        use_cache=keep_cache, **extra)
        states = out.logits if self.head is None else out.last_hidden_state
        return states, (getattr(out, "cache", None) or getattr(out, "past_key_values", None)) if keep_cache else None


def _cache_name(module: torch.nn.Module) -> str:
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _split_model(model: torch.nn.Module) -> tuple[torch.nn.Module, Head] | str:
    """The decoder body (final norm included) and the output layer of a Hugging Face causal LM,
    a peft-wrapped one's (its LoRA layers live inside them), with Gemma's
    ``final_logit_softcapping`` (``cap * tanh(logits / cap)``) applied as the model applies it;
    or why the model has no such split."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not (hasattr(base, "get_decoder") and hasattr(base, "get_output_embeddings")):
        return "no get_decoder / get_output_embeddings"
    body, out = base.get_decoder(), base.get_output_embeddings()
    if body is base or out is None:
        return "no separate decoder body and output layer"
    cap = getattr(getattr(base, "config", None), "final_logit_softcapping", None)

    def head(hidden: torch.Tensor) -> torch.Tensor:
        logits = out(hidden)
        return logits if not cap else torch.tanh(logits / cap) * cap

    return body, head


def forward_for(model: torch.nn.Module, probe: dict[str, torch.Tensor]) -> tuple[_Forward, str]:
    """The model's forward for scoring, and its ``Scored.logits`` label: body + output layer
    at the answer positions only, where that reproduces the model's own logits on ``probe``
    (one short sequence); else the model's full logits, saying why (a head that scales its
    logits, e.g. Cohere's ``logit_scale`` or Granite's ``logits_scaling``, fails the check)."""
    positions = torch.arange(probe["input_ids"].shape[1], device=probe["input_ids"].device)[None]
    own = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"], position_ids=positions,
                use_cache=False).logits
    full = _Forward(model, None, own.shape[-1], _cache_name(model))
    split = _split_model(model)
    if isinstance(split, str):
        return full, f"full: {split}"
    forward = _Forward(*split, own.shape[-1], _cache_name(split[0]))
    mine = forward.head(forward(probe["input_ids"], probe["attention_mask"], positions)[0])
    gap = float((own.float() - mine.float()).abs().max())
    tolerance = max(1e-4, 8 * torch.finfo(own.dtype).eps) * (1 + float(own.float().abs().max()))
    if not gap <= tolerance:
        return full, f"full: the output layer alone does not give the model's logits (max |difference| {gap:.2g})"
    return forward, "answer positions"


def _split_point(item) -> int:
    """Where a pair's shared prefix ends: its prompt (at least one token, which a raw text's
    first token, never scored, serves as)."""
    return max(item.prompt_length, 1)


def _score_batch(
    forward: _Forward, items: Sequence, splits: Sequence[int], with_stats: Sequence[bool], pad: int,
) -> tuple[list[TokenScores], int, int]:
    """One batch: each distinct prefix ``input_ids[:split]`` through the model once, its KV
    cache copied to the rows that share it, then each row's remaining tokens, in passes of
    similar lengths (:func:`tail_passes`); the answer positions' states of all passes through
    the output layer in chunks. Returns the scores, tokens pushed and passes."""
    device = model_device(forward.body)
    prefixes: dict[tuple[int, ...], int] = {}
    group = [prefixes.setdefault(tuple(it.input_ids[:s]), len(prefixes)) for it, s in zip(items, splits)]
    heads = [EncodedItem(list(ids), list(ids)) for ids in prefixes]
    first = pad_batch(heads, pad, "right")
    ids, mask = first["input_ids"].to(device), first["attention_mask"].to(device)
    width = ids.shape[1]
    rest = [EncodedItem(it.input_ids[s:], it.labels[s:]) for it, s in zip(items, splits)]
    parts = tail_passes([len(r.input_ids) for r in rest])
    prefix_states, cache = forward(ids, mask, torch.arange(width, device=device)[None].expand_as(ids),
                                   keep_cache=bool(parts))
    tokens, passes = ids.numel(), 1
    # Position t of a row predicts token t + 1: t < split reads the prefix pass (group g, column
    # t), t >= split the pass that ran the row's remaining tokens (its row's first state at
    # row_start[r], column t - split).
    sources = [prefix_states.flatten(0, 1)]
    offset = width * len(prefixes)
    row_start = [0] * len(items)
    for k, part in enumerate(parts):
        tail = pad_batch([rest[r] for r in part], pad, "right")
        tail_ids = tail["input_ids"].to(device)
        rows = torch.tensor([group[r] for r in part], device=device)
        own = cache if k == len(parts) - 1 else copy.deepcopy(cache)  # each pass extends its copy
        own.reorder_cache(rows)
        starts = torch.tensor([splits[r] for r in part], device=device)[:, None]
        tail_states, _ = forward(tail_ids, torch.cat([mask[rows], tail["attention_mask"].to(device)], 1),
                                 starts + torch.arange(tail_ids.shape[1], device=device)[None], own)
        del own
        sources.append(tail_states.flatten(0, 1))
        for j, r in enumerate(part):
            row_start[r] = offset + j * tail_ids.shape[1]
        offset += tail_ids.numel()
        tokens, passes = tokens + tail_ids.numel(), passes + 1
    index, targets, counts = [], [], []
    for r, (it, s) in enumerate(zip(items, splits)):
        positions = [t for t in range(len(it.labels) - 1) if it.labels[t + 1] != IGNORE_INDEX]
        index += [group[r] * width + t if t < s else row_start[r] + t - s for t in positions]
        targets += [it.labels[t + 1] for t in positions]
        counts.append(len(positions))
    states = torch.cat(sources) if len(sources) > 1 else sources[0]
    del sources, prefix_states, cache
    flags = torch.repeat_interleave(torch.tensor(list(with_stats), device=device),
                                    torch.tensor(counts, device=device))
    logprobs, hits, mu, sigma = position_scores(
        states, torch.tensor(index, dtype=torch.long, device=device), torch.tensor(targets, device=device),
        flags, forward.head, forward.vocab, CHUNK_ELEMENTS)
    logprobs_np = logprobs.double().cpu().numpy()
    hits_np = hits.cpu().numpy()
    mu_np = mu.cpu().numpy() if mu is not None else None
    sigma_np = sigma.cpu().numpy() if sigma is not None else None
    out: list[TokenScores] = []
    start = 0
    for row, n in enumerate(counts):
        sl = slice(start, start + n)
        start += n
        keep = with_stats[row]
        out.append(
            TokenScores(
                logprobs=logprobs_np[sl],
                hits=hits_np[sl],
                mu=mu_np[sl] if keep else None,
                sigma=sigma_np[sl] if keep else None,
            )
        )
    return out, tokens, passes


def score_pairs(
    model: torch.nn.Module,
    tokenizer,
    pairs: Sequence[Pair],
    *,
    batch_size: int = 32,
    max_length: int = 512,
    with_stats: Sequence[bool] | None = None,
    share_prefixes: bool = True,
    progress: Progress | None = None,
) -> Scored:
    """Score each pair in batches of ``batch_size``, right-padded.

    Pairs whose sequences start with the same prompt tokens (a question's answer, paraphrased
    and perturbed answers) are batched together and share one pass over that prompt: its KV
    cache is copied to each candidate, and only the candidates' own tokens go through the
    model again. Only the answer positions' hidden states go through the output layer (in
    chunks, :func:`position_scores`), so no ``[batch, length, vocab]`` logits exist, where the
    model's output layer alone reproduces its logits (checked on the shortest pair; else its
    full logits are used, and ``Scored.logits`` says why). ``share_prefixes=False`` pushes
    every whole sequence through once instead (the way scoring worked before; the benchmark's
    baseline): the same values within float rounding. A model with a sliding attention window
    (``config.sliding_window``: Mistral, Gemma 2/3) scores whole sequences whenever one is longer
    than the window.

    ``with_stats[i]`` asks for the Min-K%++ distribution statistics of pair ``i`` (they cost a
    full-vocabulary softmax in float64, so only the pairs that need them pay). Scores come back
    in the order of ``pairs``; duplicates are the caller's business (see ``evaluate``).
    """
    check_special_tokens(tokenizer)
    if not pairs:
        return Scored([], 0, 0, "none")
    flags = list(with_stats) if with_stats is not None else [False] * len(pairs)
    items = [encode_pair(tokenizer, p.prefix, p.continuation, max_length, p.eos, p.specials) for p in pairs]
    window = getattr(getattr(model, "config", None), "sliding_window", None)
    if isinstance(window, int) and max(len(it.input_ids) for it in items) > window:
        # a sliding-window layer's cache keeps only the last `window` columns of the padded
        # prefix pass, which for a shorter prefix are padding: no sharing then
        share_prefixes = False
    splits = [_split_point(it) if share_prefixes else len(it.input_ids) for it in items]
    order = prefix_order(items, splits)
    results: list[TokenScores | None] = [None] * len(pairs)
    tokens = passes = 0
    pad = pad_id(tokenizer)
    device = model_device(model)
    with eval_mode(model), torch.inference_mode():
        shortest = min(items, key=lambda it: len(it.input_ids))
        probe = {k: v.to(device) for k, v in pad_batch([shortest], pad).items()}
        forward, logits = forward_for(model, probe)
        keys = [tuple(it.input_ids[:s]) for it, s in zip(items, splits)] if share_prefixes else None
        for chunk in batches(order, batch_size, "scoring", progress, keys):
            scores, pushed, runs = _score_batch(forward, [items[i] for i in chunk], [splits[i] for i in chunk],
                                                [flags[i] for i in chunk], pad)
            tokens, passes = tokens + pushed, passes + runs
            for i, scored in zip(chunk, scores):
                cut = items[i].truncated  # a cut sequence lost its EOS with its end
                results[i] = replace(scored, eos=pairs[i].eos and not cut, truncated=cut)
    return Scored(results, tokens, passes, logits)  # type: ignore[arg-type]
