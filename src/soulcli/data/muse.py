"""MUSE-format data folders (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation"):
the layout, reading it strictly, writing it atomically, importing it; the KnowMem prompt.

Layout of one corpus folder (as ``swj0419/muse_bench/load_data.py`` writes ``data/<corpus>/``
from the hub datasets ``muse-bench/MUSE-Books`` and ``muse-bench/MUSE-News``, whose subsets
are these sub-folders)::

    raw/forget, raw/retain1, raw/retain2, raw/holdout      texts (training corpus; holdout never trained)
    verbmem/forget                                         records {prompt, gt}
    knowmem/forget_qa, knowmem/retain_qa                   records {question, answer} (evaluated)
    knowmem/forget_qa_icl, knowmem/retain_qa_icl           records {question, answer} (few-shot)
    privleak/forget, privleak/retain, privleak/holdout     texts (membership-inference sets)

Required: ``raw/forget``, ``raw/retain1``, ``verbmem/forget``, the four ``knowmem`` files,
``privleak/forget``, and ``privleak/holdout`` or (taken in its place) ``raw/holdout``.
Optional: ``raw/retain2``, ``raw/holdout``, ``privleak/retain`` (MUSE's PrivLeak uses only
forget vs holdout). In MUSE the retain KnowMem questions and the PrivLeak retain texts come
from ``retain2`` (older MUSE-Books revisions name them ``knowmem/retain2_qa[_icl]`` and
``privleak/retain2``; both names are read). ``retain1`` is what unlearning methods may use.

Files, per part, first found wins: ``<split>.json`` (a JSON array: MUSE's local format; texts
as strings or as ``{"text": ...}`` objects, which MUSE's ``baselines/dataset.py`` also takes),
``<split>-*.parquet`` (the hub's layout, shards in name order; needs pandas and pyarrow), and
for ``raw`` only ``<split>.txt`` (MUSE's training files: the texts joined by a blank line; read
back split at blank lines). soulcli writes ``.json`` arrays and a ``benchmark.json`` manifest.

MUSE's evaluation conventions (the metrics are implemented elsewhere; these are the facts):

* VerbMem (``muse_bench/metrics/verbmem.py``, ``eval.py``): greedy decoding of 128 new tokens
  from ``prompt`` (tokenised with BOS); the reference is ``gt`` cut to its first 128 tokens
  (tokenised with BOS, so 127 text tokens, then decoded without special tokens). Score:
  ROUGE-L F1 (``rouge_score``, ``use_stemmer=False``), mean over items, x100.
  open-unlearning (``configs/data/datasets/MUSE_forget_verbmem.yaml``) feeds
  ``prompt + " " + gt`` (``insert_space: True``).
* KnowMem (``muse_bench/metrics/knowmem.py``): the prompt of :func:`knowmem_prompt`, greedy
  32 new tokens, the generation cut by :func:`knowmem_answer`; ROUGE-L F1 (no stemming)
  against ``answer``, mean, x100. KnowMem on forget_qa uses forget_qa_icl shots, on retain_qa
  retain_qa_icl (retain_qa is the utility score).
* PrivLeak (``muse_bench/metrics/privleak.py``, ``eval.py``, ``constants.py``): Min-40% Prob
  (Shi et al. 2023): per text, log-probs of every token after BOS; score = -(mean of the
  ``int(0.4 * n)`` lowest). AUC with forget texts labelled 0 (non-member) and holdout texts 1
  (member) and score ``-Min-40%`` (``roc_curve(y, -score)``), i.e. AUC = P(a holdout text is
  more likely than a forget text): ~0 for a model that memorised forget, ~0.5 when it never
  saw either. PrivLeak = (AUC_unlearned - AUC_retrain) / AUC_retrain x 100, AUC_retrain from
  the model trained without forget (MUSE tabulates key ``forget_holdout_Min-40%``: Books
  0.5393, News 0.4772; its ``eval.py`` indexes that table without the corpus, a bug).
  Negative = under-unlearned (still distinguishable as trained), positive = over-unlearned.
  open-unlearning (``src/evals/metrics/privacy.py``) computes the opposite orientation and
  uses 1 - AUC to match; it takes ``max(1, int(k n))`` tokens.
* Training on raw text (``muse_bench/baselines/baselines/dataset.py`` with ``raw/*.txt``):
  texts joined by ``"\\n\\n"``, tokenised without special tokens, cut into consecutive windows
  of ``max_len - 1`` tokens (no overlap) each prefixed with BOS (``max_len`` 2048 in the
  scripts); a short last window is filled up from the first tokens. open-unlearning
  (``src/data/pretraining.py``) joins the same way and cuts windows of ``max_length`` tokens
  (2048, no overlap, the last one short), adding BOS per window.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from soulcli.data import tofu
from soulcli.data.io import (
    MANIFEST_NAME,
    atomic_dir,
    check_writable_dir,
    content_hash,
    read_manifest,
    write_json,
)
from soulcli.errors import UserError

RAW_SPLITS: tuple[str, ...] = ("forget", "retain1", "retain2", "holdout")
KNOWMEM_SPLITS: tuple[str, ...] = ("forget_qa", "retain_qa", "forget_qa_icl", "retain_qa_icl")
PRIVLEAK_SPLITS: tuple[str, ...] = ("forget", "retain", "holdout")
VERBMEM_FIELDS: tuple[str, ...] = ("prompt", "gt")
KNOWMEM_FIELDS: tuple[str, ...] = ("question", "answer")

#: Every file of a folder soulcli writes, relative to it (the optional ones may be absent).
MUSE_SPLIT_FILES: tuple[str, ...] = (
    *(f"raw/{s}.json" for s in RAW_SPLITS),
    "verbmem/forget.json",
    *(f"knowmem/{s}.json" for s in KNOWMEM_SPLITS),
    *(f"privleak/{s}.json" for s in PRIVLEAK_SPLITS),
)
#: The parts a folder may lack (``privleak/holdout`` may be absent only where ``raw/holdout`` is).
OPTIONAL_FILES: tuple[str, ...] = ("raw/retain2.json", "raw/holdout.json", "privleak/retain.json")

#: Where MUSE's KnowMem evaluation cuts a generated answer (``metrics/knowmem.py``).
KNOWMEM_STOP: tuple[str, ...] = ("\n\n", "\nQuestion", "Question:")

_ALIASES = {("knowmem", "retain_qa"): ("retain2_qa",), ("knowmem", "retain_qa_icl"): ("retain2_qa_icl",),
            ("privleak", "retain"): ("retain2",)}
_HUB_PARTS = ("raw", "verbmem", "knowmem", "privleak")


@dataclass(frozen=True)
class MuseData:
    """One MUSE corpus in memory: texts by split, VerbMem and KnowMem records, PrivLeak texts.

    ``raw`` holds the splits present among :data:`RAW_SPLITS` (forget and retain1 always),
    ``knowmem`` all of :data:`KNOWMEM_SPLITS`, ``privleak`` forget and holdout (retain when
    present). Records hold exactly their fields (``prompt``/``gt``, ``question``/``answer``).
    """

    raw: dict[str, list[str]]
    verbmem: list[dict]
    knowmem: dict[str, list[dict]]
    privleak: dict[str, list[str]]
    meta: dict = field(default_factory=dict, compare=False)


def knowmem_prompt(icl: list[dict], question: str) -> str:
    """The few-shot prompt of MUSE's KnowMem (``muse_bench/metrics/knowmem.py``): each shot as
    ``Question: q\\nAnswer: a`` followed by a blank line, then the question, ending ``Answer: ``."""
    shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in icl)
    return f"{shots}Question: {question}\nAnswer: "


def knowmem_answer(generation: str) -> str:
    """MUSE's post-processing of a KnowMem generation (``muse_bench/metrics/knowmem.py``): the
    text before the first ``"\\n\\n"``, then before ``"\\nQuestion"``, then before ``"Question:"``."""
    for stop in KNOWMEM_STOP:
        generation = generation.split(stop)[0]
    return generation


# --- reading -------------------------------------------------------------------------------


def _candidates(folder: Path, part: str, split: str) -> list[list[Path]]:
    """The files that may hold ``part/split``, in preference order (a parquet entry may be shards)."""
    out: list[list[Path]] = []
    for name in (split, *_ALIASES.get((part, split), ())):
        out.append([folder / part / f"{name}.json"])
        out.append(sorted((folder / part).glob(f"{name}-*.parquet")))
        if part == "raw":
            out.append([folder / part / f"{name}.txt"])
    return [paths for paths in out if paths and all(p.is_file() for p in paths)]


def _decode(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"could not read {path} ({exc.strerror}); check its permissions") from None


def _read_items(path: Path) -> list[Any]:
    """The raw items of one file (a JSON array, a Parquet table's rows, or a .txt's texts)."""
    if path.suffix == ".parquet":
        return tofu._read_parquet(path)[0]
    text = _decode(path)
    if path.suffix == ".txt":
        return [t.strip() for t in re.split(r"\n[ \t]*\n", text) if t.strip()]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                        "fix the file or re-import the MUSE data") from None
    if not isinstance(data, list):
        raise UserError(f"{path} holds a JSON {type(data).__name__}, not a list; MUSE files are JSON "
                        "arrays (of texts, or of records); re-import the MUSE data")
    return data


def _texts(paths: list[Path]) -> list[str]:
    out: list[str] = []
    for path in paths:
        for i, item in enumerate(_read_items(path), 1):
            if isinstance(item, dict) and "text" in item:
                item = item["text"]
            if not isinstance(item, str) or not item.strip():
                got = "an empty text" if isinstance(item, str) else type(item).__name__
                raise UserError(f"{path} item {i}: expected a non-empty text (a string or "
                                f"{{\"text\": ...}}), got {got}; fix the file")
            out.append(item)
    return out


def _records(paths: list[Path], fields: tuple[str, ...]) -> list[dict]:
    out: list[dict] = []
    for path in paths:
        for i, item in enumerate(_read_items(path), 1):
            if not isinstance(item, dict):
                raise UserError(f"{path} item {i}: expected an object with {', '.join(fields)}, "
                                f"got {type(item).__name__}; fix the file")
            missing = [f for f in fields if f not in item]
            if missing:
                raise UserError(f"{path} item {i}: missing field(s) {', '.join(missing)}; every record "
                                f"needs {', '.join(fields)}; fix the file")
            bad = next((f for f in fields if not isinstance(item[f], str)), None)
            if bad is not None:
                raise UserError(f"{path} item {i}: field {bad} must be a string, got "
                                f"{type(item[bad]).__name__}; fix the file")
            out.append({f: item[f] for f in fields})
    return out


def _part(folder: Path, part: str, split: str, fields: tuple[str, ...] | None) -> list | None:
    """The validated items of ``part/split`` (texts, or records with ``fields``); None if absent."""
    found = _candidates(folder, part, split)
    if not found:
        return None
    paths = found[0]
    items = _texts(paths) if fields is None else _records(paths, fields)
    if not items:
        raise UserError(f"{paths[0]} is empty; MUSE's {part}/{split} needs at least one item; "
                        "fix the file or re-import the MUSE data")
    return items


def load_muse(folder: str | os.PathLike) -> MuseData:
    """Read and validate the MUSE corpus in ``folder`` (see the module docstring for the layout).

    Every problem raises :class:`~soulcli.errors.UserError` in one line naming the file: a
    missing required part (every part not in :data:`OPTIONAL_FILES`), a file that is not
    UTF-8, not JSON or not a list, an item that is not a text or a record missing
    ``prompt``/``gt``/``question``/``answer`` or holding a non-string, an empty part. A
    missing ``privleak/holdout`` is taken from ``raw/holdout``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"MUSE folder {folder} does not exist (or is not a folder); generate the "
                        "built-in corpus or import MUSE into it first")
    parts: dict[str, Any] = {
        **{f"raw/{s}": _part(folder, "raw", s, None) for s in RAW_SPLITS},
        "verbmem/forget": _part(folder, "verbmem", "forget", VERBMEM_FIELDS),
        **{f"knowmem/{s}": _part(folder, "knowmem", s, KNOWMEM_FIELDS) for s in KNOWMEM_SPLITS},
        **{f"privleak/{s}": _part(folder, "privleak", s, None) for s in PRIVLEAK_SPLITS},
    }
    if parts["privleak/holdout"] is None:
        parts["privleak/holdout"] = parts["raw/holdout"]
    for name, items in parts.items():
        if items is None and f"{name}.json" not in OPTIONAL_FILES:
            split = name.split("/")[1]
            looked = f"{split}.json or {split}-*.parquet" + (f" or {split}.txt" if name.startswith("raw/") else "")
            also = " nor raw/holdout (texts never trained on)" if name == "privleak/holdout" else ""
            raise UserError(f"{folder} has no {name}{also} (looked for {looked}); pass a folder in MUSE's "
                            "layout (raw/, verbmem/, knowmem/, privleak/) or import one first")

    def group(part: str, splits: tuple[str, ...]) -> dict:
        return {s: parts[f"{part}/{s}"] for s in splits if parts[f"{part}/{s}"] is not None}

    return MuseData(raw=group("raw", RAW_SPLITS), verbmem=parts["verbmem/forget"],
                    knowmem=group("knowmem", KNOWMEM_SPLITS), privleak=group("privleak", PRIVLEAK_SPLITS),
                    meta=read_manifest(folder) or {})


def muse_fingerprint(folder: str | os.PathLike) -> str:
    """:func:`~soulcli.data.io.content_hash` over every file :func:`load_muse` may read (each
    part's ``.json`` / ``.parquet`` / ``.txt`` files, whatever their names): the key of a MUSE
    folder's content wherever it lies, for a folder soulcli wrote (its manifest excluded) and
    for one to import (hub shards and aliases included)."""
    folder = Path(folder)
    names = [str(p.relative_to(folder)) for part in _HUB_PARTS for p in sorted((folder / part).glob("*"))
             if p.is_file() and p.suffix in (".json", ".parquet", ".txt") and not p.name.startswith(".")]
    return content_hash(folder, names)


# --- writing and importing -----------------------------------------------------------------


def _files(data: MuseData) -> dict[str, list]:
    """Relative path -> content, in :data:`MUSE_SPLIT_FILES` order."""
    parts = {
        **{f"raw/{s}.json": v for s, v in data.raw.items()},
        "verbmem/forget.json": data.verbmem,
        **{f"knowmem/{s}.json": v for s, v in data.knowmem.items()},
        **{f"privleak/{s}.json": v for s, v in data.privleak.items()},
    }
    unknown = sorted(set(parts) - set(MUSE_SPLIT_FILES))
    if unknown:
        raise UserError(f"unknown MUSE part(s) {', '.join(unknown)}; parts are {', '.join(MUSE_SPLIT_FILES)}")
    return {name: parts[name] for name in MUSE_SPLIT_FILES if name in parts}


def write_muse(data: MuseData, out: str | os.PathLike, *, overwrite: bool = False,
               meta: Mapping | None = None) -> dict:
    """Write ``data`` in MUSE's layout (JSON arrays) plus a ``benchmark.json`` manifest, atomically
    (:func:`~soulcli.data.io.atomic_dir`: all or nothing; a user's folder is never replaced).

    The manifest is ``meta`` (default ``data.meta``) followed by ``format: "muse"``, ``counts``
    (items per file) and ``content_hash`` (:func:`muse_fingerprint`). Returns it.
    """
    files = _files(data)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for name, items in files.items():
            write_json(tmp / name, items)
        manifest = dict(data.meta if meta is None else meta)
        manifest["format"] = "muse"
        manifest["counts"] = {name.removesuffix(".json"): len(items) for name, items in files.items()}
        manifest["content_hash"] = muse_fingerprint(tmp)
        write_json(tmp / MANIFEST_NAME, manifest)
    return manifest


def _import_hub(repo_id: str, out, overwrite: bool) -> dict:
    staging = Path(tempfile.mkdtemp(prefix="soulcli-muse-"))
    try:
        wanted = tofu.fetch_hub_files(
            repo_id, lambda f: f.split("/", 1)[0] in _HUB_PARTS and f.endswith((".json", ".parquet", ".txt")),
            staging, "a local folder in MUSE's layout")
        data = load_muse(staging)
        return write_muse(data, out, overwrite=overwrite, meta={
            "generator": "soulcli.import_muse", "source": {"type": "hub", "repo_id": repo_id, "files": wanted}})
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def import_muse(source: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False) -> dict:
    """Copy a MUSE corpus (a local folder in MUSE's layout, or a hub id like
    ``muse-bench/MUSE-Books``) into ``out``, validated (:func:`load_muse`) and rewritten as
    JSON arrays with a manifest (:func:`write_muse`). Returns the manifest.

    The target is checked before any download; offline, a hub id fails at once in one line.
    """
    src = Path(source).expanduser()
    if src.exists():
        if not src.is_dir():
            raise UserError(f"{src} is a file; pass the MUSE folder that holds raw/, verbmem/, knowmem/, privleak/")
        check_writable_dir(out, overwrite=overwrite)
        data = load_muse(src)
        return write_muse(data, out, overwrite=overwrite, meta={
            "generator": "soulcli.import_muse", "source": {"type": "folder", "path": str(src.resolve())}})
    if tofu._HUB_ID.match(str(source)):
        check_writable_dir(out, overwrite=overwrite)
        return _import_hub(str(source), out, overwrite)
    raise UserError(f"'{source}' is neither an existing folder nor a Hugging Face dataset id like "
                    "muse-bench/MUSE-Books; pass a folder in MUSE's layout")


__all__ = [
    "KNOWMEM_FIELDS", "KNOWMEM_SPLITS", "KNOWMEM_STOP", "MUSE_SPLIT_FILES", "MuseData", "OPTIONAL_FILES",
    "PRIVLEAK_SPLITS", "RAW_SPLITS", "VERBMEM_FIELDS", "import_muse", "knowmem_answer", "knowmem_prompt",
    "load_muse", "muse_fingerprint", "write_muse",
]
