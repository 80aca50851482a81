"""Detoxification data in PKU-SafeRLHF's record format (Ji et al. 2024, "PKU-SafeRLHF: Towards
Multi-Level Safety Alignment for LLMs with Human Preference", arXiv:2406.15513; SOUL's
detoxification task, Jia et al., EMNLP 2024): the layout, reading it strictly, writing it
atomically, importing it.

One folder holds three parts, each ``<part>.jsonl``, ``<part>.json`` or ``<part>/*.parquet``
(:mod:`soulcli.data.parts`)::

    train    prompt/response records with a safety label   (PKU-SafeRLHF's data/<model>/train.jsonl)
    test     evaluation prompts                            (PKU-SafeRLHF's test.jsonl: its prompts)
    benign   held-out benign text for perplexity           (SOUL: wikitext; {"text": ...} rows)

A ``train`` record is either PKU-SafeRLHF's pair record ``{"prompt", "response_0",
"response_1", "is_response_0_safe", "is_response_1_safe", ...}`` (further fields, such as
``safer_response_id`` or the harm categories, are ignored) or PKU-SafeRLHF-QA's single record
``{"prompt", "response", "is_safe", ...}``. Each response is one item: the **unsafe** ones
form the forget set, as SOUL's ``SafePku.py`` takes every response whose ``is_response_i_safe``
is false; the safe ones form the retain set (soulcli's choice: benign answers to the same kind of
prompts). A ``test`` record needs only ``prompt`` (either record form qualifies). Safety labels
must be JSON booleans. Every problem is one :class:`UserError` line naming the file (and the
line or row): not UTF-8, a bad JSON line, a missing or mistyped field, an empty part.

soulcli writes ``train.jsonl`` in the single-record form (one row per response), ``test.jsonl``
as ``{"prompt"}`` rows, ``benign.jsonl`` and a ``benchmark.json`` manifest.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from soulcli.data import tofu
from soulcli.data.io import MANIFEST_NAME, atomic_dir, check_writable_dir, content_hash, read_manifest, write_json, write_jsonl
from soulcli.data.parts import DATA_SUFFIXES, find_part, part_records, text_record
from soulcli.errors import UserError

PARTS: tuple[str, ...] = ("train", "test", "benign")
PAIR_FIELDS = ("prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe")
SINGLE_FIELDS = ("prompt", "response", "is_safe")
LAYOUT_HINT = ("a folder with train (PKU-SafeRLHF records), test (prompts) and benign ({\"text\"} rows), "
               "each .jsonl, .json or <part>/*.parquet")


@dataclass(frozen=True)
class DetoxData:
    """One detoxification folder in memory: ``train`` rows ``{"prompt", "response", "is_safe"}``
    (one per response), the evaluation ``prompts`` and the held-out ``benign`` texts."""

    train: list[dict]
    prompts: list[str]
    benign: list[str]
    meta: dict = field(default_factory=dict, compare=False)

    def responses(self, safe: bool) -> list[dict]:
        """The train rows whose label is ``safe`` (False: the forget set; True: the retain set)."""
        return [r for r in self.train if r["is_safe"] is safe]


# --- reading -------------------------------------------------------------------------------


def _prompt(path: Path, where: str, item: Any) -> str:
    if not isinstance(item, dict):
        raise UserError(f"{path} {where}: expected an object with a prompt, got {type(item).__name__}; fix the file")
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{path} {where}: prompt must be a non-empty string; fix the file")
    return prompt


def _train_rows(path: Path, where: str, item: Any) -> list[dict]:
    """The responses of one PKU-SafeRLHF pair record or PKU-SafeRLHF-QA record, labelled."""
    prompt = _prompt(path, where, item)
    if "response" in item or "is_safe" in item:
        fields, pairs = SINGLE_FIELDS, [("response", "is_safe")]
    else:
        fields, pairs = PAIR_FIELDS, [("response_0", "is_response_0_safe"), ("response_1", "is_response_1_safe")]
    missing = [f for f in fields if f not in item]
    if missing:
        raise UserError(f"{path} {where}: missing field(s) {', '.join(missing)}; a train record needs "
                        f"{', '.join(PAIR_FIELDS)} (PKU-SafeRLHF) or {', '.join(SINGLE_FIELDS)} (PKU-SafeRLHF-QA)")
    rows = []
    for response, label in pairs:
        if not isinstance(item[response], str):
            raise UserError(f"{path} {where}: {response} must be a string, got {type(item[response]).__name__}; fix the file")
        if not isinstance(item[label], bool):
            raise UserError(f"{path} {where}: {label} must be true or false, got {item[label]!r}; fix the file")
        rows.append({"prompt": prompt, "response": item[response], "is_safe": item[label]})
    return rows


def parse_parts(files: Mapping[str, list[Path]]) -> DetoxData:
    """Read and validate the files of each part (``train``, ``test``, ``benign``)."""
    train = [row for path, where, item in part_records(files["train"]) for row in _train_rows(path, where, item)]
    if not any(not r["is_safe"] for r in train):
        raise UserError(f"{files['train'][0]} has no unsafe response, so there is nothing to forget; "
                        "give records with is_response_*_safe (or is_safe) false")
    return DetoxData(train=train,
                     prompts=[_prompt(path, where, item) for path, where, item in part_records(files["test"])],
                     benign=[text_record(path, where, item) for path, where, item in part_records(files["benign"])])


def load_detox(folder: str | os.PathLike) -> DetoxData:
    """Read and validate the detoxification folder ``folder`` (layout in the module docstring).
    Every problem is one :class:`UserError` line naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"detox folder {folder} does not exist (or is not a folder); generate the "
                        "built-in data or import PKU-SafeRLHF-style files into it first")
    files = {}
    for part in PARTS:
        paths = find_part(folder, part)
        if paths is None:
            raise UserError(f"{folder} has no {part} (looked for {part}.jsonl, {part}.json, {part}/*.parquet); "
                            f"pass {LAYOUT_HINT}")
        files[part] = paths
    data = parse_parts(files)
    return DetoxData(data.train, data.prompts, data.benign, meta=read_manifest(folder) or {})


def data_files(folder: str | os.PathLike) -> list[str]:
    """The data files of the three parts (relative paths): a classifier folder beside them is
    not data."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for part in PARTS for p in (find_part(folder, part) or []))


def detox_fingerprint(folder: str | os.PathLike) -> str:
    """:func:`~soulcli.data.io.content_hash` over :func:`data_files`: the key of a folder's data
    wherever it lies."""
    return content_hash(folder, data_files(folder))


# --- writing and importing -----------------------------------------------------------------


def write_detox(data: DetoxData, out: str | os.PathLike, *, overwrite: bool = False, meta: Mapping | None = None,
                extra: Callable[[Path], Mapping] | None = None) -> dict:
    """Write ``data`` as the three ``.jsonl`` parts plus a ``benchmark.json`` manifest (``meta``,
    default ``data.meta``, then ``format: "detox"``, ``counts`` and ``content_hash``),
    atomically. ``extra(folder)`` may add files to the folder being built (the built-in
    classifier) and returns manifest entries. Returns the manifest."""
    content = {"train": data.train, "test": [{"prompt": p} for p in data.prompts],
               "benign": [{"text": t} for t in data.benign]}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for part, rows in content.items():
            write_jsonl(tmp / f"{part}.jsonl", rows)
        manifest = dict(data.meta if meta is None else meta)
        manifest.update(format="detox", counts={"forget (unsafe responses)": len(data.responses(False)),
                                                "retain (safe responses)": len(data.responses(True)),
                                                "test prompts": len(data.prompts), "benign texts": len(data.benign)},
                        content_hash=detox_fingerprint(tmp))
        if extra is not None:
            manifest.update(extra(tmp))
        write_json(tmp / MANIFEST_NAME, manifest)
    return manifest


def import_detox(source: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False) -> dict:
    """Copy a detoxification folder (local, or a hub dataset id holding files named ``train``,
    ``test`` and ``benign`` at any depth, concatenated in path order per part: PKU-SafeRLHF's
    ``data/<model>/train.jsonl`` shards) into ``out``, validated and rewritten as ``.jsonl``
    with a manifest. The target is checked before any download; offline, a hub id fails at
    once in one line."""
    src = Path(source).expanduser()
    if src.exists():
        if not src.is_dir():
            raise UserError(f"{src} is a file; pass {LAYOUT_HINT}")
        check_writable_dir(out, overwrite=overwrite)
        return write_detox(load_detox(src), out, overwrite=overwrite, meta={
            "generator": "soulcli.import_detox", "source": {"type": "folder", "path": str(src.resolve())}})
    if not tofu._HUB_ID.match(str(source)):
        raise UserError(f"'{source}' is neither an existing folder nor a Hugging Face dataset id; pass {LAYOUT_HINT}")
    check_writable_dir(out, overwrite=overwrite)
    staging = Path(tempfile.mkdtemp(prefix="soulcli-detox-"))

    def part_of(name: str) -> str:
        return Path(name).name.split(".")[0]

    try:
        files = tofu.fetch_hub_files(str(source), lambda n: n.endswith(DATA_SUFFIXES) and part_of(n) in PARTS,
                                     staging, f"{LAYOUT_HINT} (a local copy)")
        by_part = {part: [staging / f for f in sorted(files) if part_of(f) == part] for part in PARTS}
        absent = [part for part, paths in by_part.items() if not paths]
        if absent:
            raise UserError(f"the hub dataset '{source}' has no {' or '.join(absent)} file; add it to a local "
                            f"copy (e.g. benign.jsonl of held-out benign text) and pass {LAYOUT_HINT}")
        return write_detox(parse_parts(by_part), out, overwrite=overwrite, meta={
            "generator": "soulcli.import_detox", "source": {"type": "hub", "repo_id": str(source), "files": files}})
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = ["DetoxData", "PAIR_FIELDS", "PARTS", "SINGLE_FIELDS", "data_files", "detox_fingerprint", "import_detox",
           "load_detox", "parse_parts", "write_detox"]
