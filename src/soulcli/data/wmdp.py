"""WMDP-format data folders (Li et al. 2024, "The WMDP Benchmark: Measuring and Reducing
Malicious Use With Unlearning", arXiv:2403.03218): the layout, reading it strictly, writing
it atomically, importing it; the multiple-choice prompt of lm-evaluation-harness.

One folder holds one forget domain ``<domain>`` (``bio``, ``cyber``, ``chem``, or any name;
the built-in one is ``hazards``), in the file names of the hub datasets (``cais/wmdp``,
``cais/mmlu``, ``cais/wmdp-corpora``) and of the WMDP repository's ``data/`` folder::

    wmdp-<domain>            multiple choice of the forget domain   (cais/wmdp, config wmdp-<domain>)
    mmlu                     multiple choice for utility            (cais/mmlu, config all)
    <domain>-forget-corpus   texts the forget domain is learned from (WMDP data/, cais/wmdp-corpora)
    <domain>-retain-corpus   texts to keep                          (WMDP data/, cais/wmdp-corpora)

Each part is ``<part>.jsonl`` (one JSON object per line, as WMDP's ``bio-forget-corpus.jsonl``),
``<part>.json`` (a JSON array), or the hub's Parquet shards ``<part>/*.parquet`` (``mmlu``
also as ``all/*.parquet``, the config folder of ``cais/mmlu``; shards in name order, needs
pandas and pyarrow); the first found wins. soulcli writes ``.jsonl`` and a ``benchmark.json``
manifest.

Records: a multiple-choice row is ``{"question": str, "choices": [4 str], "answer": int 0-3}``
(WMDP's and MMLU's fields; MMLU's ``subject`` is kept when present); a corpus row is
``{"text": str}`` (the corpora's only field). Every problem is one :class:`UserError` line
naming the file (and the line or row): not UTF-8, a bad JSON line, a missing or mistyped
field, not 4 choices, an answer out of range, an empty part.

Where WMDP's own code differs: its ``rmu/utils.py`` reads ``data/<corpus>.jsonl`` taking
``json.loads(line)["text"]`` for ``bio-forget-corpus`` but every other corpus line verbatim,
and drops texts of 50 characters or fewer; soulcli reads every corpus as ``{"text": ...}``
objects (what the hub's corpora hold) and keeps every text.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from soulcli.data import tofu
from soulcli.data.io import MANIFEST_NAME, atomic_dir, check_writable_dir, content_hash, read_manifest, write_json, write_jsonl
from soulcli.data.parts import DATA_SUFFIXES, find_part, part_records, text_record
from soulcli.errors import UserError

LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
NUM_CHOICES = len(LETTERS)
#: The subjects lm-evaluation-harness's ``wmdp_<domain>.yaml`` descriptions name.
WMDP_SUBJECTS: dict[str, str] = {"bio": "biology", "cyber": "cybersecurity", "chem": "chemistry"}


@dataclass(frozen=True)
class WmdpData:
    """One WMDP folder in memory: the domain, its multiple choice, the utility multiple choice
    (rows with ``question``, ``choices``, ``answer`` and, for MMLU, ``subject``) and the two corpora."""

    domain: str
    forget_mc: list[dict]
    utility_mc: list[dict]
    forget_corpus: list[str]
    retain_corpus: list[str]
    meta: dict = field(default_factory=dict, compare=False)


def part_names(domain: str) -> dict[str, str]:
    """Role -> the file stem of that part for ``domain``."""
    return {"forget_mc": f"wmdp-{domain}", "utility_mc": "mmlu",
            "forget_corpus": f"{domain}-forget-corpus", "retain_corpus": f"{domain}-retain-corpus"}


def description(subject: str | None) -> str:
    """lm-evaluation-harness's task description put before every question (``wmdp_bio.yaml``:
    "The following are multiple choice questions (with answers) about biology.\\n\\n"; MMLU's
    per-subject yamls the same with the subject's words); none without a subject."""
    if not subject:
        return ""
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def mc_prompt(row: Mapping[str, Any], subject: str | None = None) -> str:
    """The zero-shot prompt of lm-evaluation-harness's ``wmdp`` and ``mmlu`` tasks
    (``lm_eval/tasks/wmdp/_default_template_yaml``, ``mmlu/default/_default_template_yaml``):
    the description, then ``doc_to_text`` =
    ``"{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"``.
    The answer is scored as the continuation ``" " + letter`` (the harness's default
    ``target_delimiter`` before ``doc_to_choice: ["A", "B", "C", "D"]``)."""
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, row["choices"]))
    return f"{description(subject)}{row['question'].strip()}{options}\nAnswer:"


def domain_subject(domain: str) -> str:
    """The description's subject for a forget domain (the harness's for bio / cyber / chem)."""
    return WMDP_SUBJECTS.get(domain, domain)


# --- reading -------------------------------------------------------------------------------


def _mc_row(path: Path, where: str, item: Any) -> dict:
    if not isinstance(item, dict):
        raise UserError(f"{path} {where}: expected an object with question, choices, answer, got "
                        f"{type(item).__name__}; fix the file")
    missing = [f for f in ("question", "choices", "answer") if f not in item]
    if missing:
        raise UserError(f"{path} {where}: missing field(s) {', '.join(missing)}; a multiple-choice "
                        "record needs question, choices, answer")
    question, choices, answer = item["question"], item["choices"], item["answer"]
    if not isinstance(question, str) or not question.strip():
        raise UserError(f"{path} {where}: question must be a non-empty string; fix the file")
    if not isinstance(choices, list) or len(choices) != NUM_CHOICES or not all(isinstance(c, str) for c in choices):
        got = f"{len(choices)} choices" if isinstance(choices, list) else f"a {type(choices).__name__}"
        raise UserError(f"{path} {where}: choices must be a list of {NUM_CHOICES} strings, got {got}; fix the file")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < NUM_CHOICES:
        raise UserError(f"{path} {where}: answer must be a choice index 0-{NUM_CHOICES - 1}, got "
                        f"{answer!r}; fix the file")
    row = {"question": question, "choices": list(choices), "answer": int(answer)}
    if isinstance(item.get("subject"), str) and item["subject"]:
        row["subject"] = item["subject"]
    return row


def folder_domains(folder: str | os.PathLike) -> list[str]:
    """The forget domains a folder holds (from its ``wmdp-<domain>`` parts), sorted."""
    found = {p.name.removeprefix("wmdp-").split(".")[0] for p in Path(folder).glob("wmdp-*")
             if p.is_dir() or p.suffix in (".jsonl", ".json")}
    return sorted(found)


def load_wmdp(folder: str | os.PathLike, domain: str | None = None) -> WmdpData:
    """Read and validate the WMDP folder ``folder`` (layout in the module docstring) for
    ``domain`` (default: the folder's only ``wmdp-<domain>`` part). Every problem is one
    :class:`UserError` line naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"WMDP folder {folder} does not exist (or is not a folder); generate the "
                        "built-in data or import WMDP into it first")
    if domain is None:
        domains = folder_domains(folder)
        if len(domains) != 1:
            what = "no wmdp-<domain> part" if not domains else f"several domains ({', '.join(domains)})"
            raise UserError(f"{folder} has {what}; pass a folder in WMDP's layout (wmdp-<domain>.jsonl, "
                            "mmlu.jsonl, <domain>-forget-corpus.jsonl, <domain>-retain-corpus.jsonl)"
                            + ("" if not domains else " or set data.domain"))
        domain = domains[0]
    parts: dict[str, list] = {}
    for role, stem in part_names(domain).items():
        paths = find_part(folder, stem, (stem, "all") if stem == "mmlu" else None)
        if paths is None:
            raise UserError(f"{folder} has no {stem} (looked for {stem}.jsonl, {stem}.json, {stem}/*.parquet"
                            + (", all/*.parquet" if stem == "mmlu" else "") + "); add it or fix data.domain")
        read = text_record if role.endswith("corpus") else _mc_row
        parts[role] = [read(path, where, item) for path, where, item in part_records(paths)]
    return WmdpData(domain=domain, **parts, meta=read_manifest(folder) or {})


def data_files(folder: str | os.PathLike) -> list[str]:
    """Every data file of a folder (relative paths; the manifest and hidden files excluded)."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.suffix in DATA_SUFFIXES and p.name != MANIFEST_NAME
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def wmdp_fingerprint(folder: str | os.PathLike) -> str:
    """:func:`~soulcli.data.io.content_hash` over :func:`data_files`: the key of a folder's
    content wherever it lies, for soulcli's folders and the hub's layout alike."""
    return content_hash(folder, data_files(folder))


# --- writing and importing -----------------------------------------------------------------


def write_wmdp(data: WmdpData, out: str | os.PathLike, *, overwrite: bool = False,
               meta: Mapping | None = None) -> dict:
    """Write ``data`` as the four ``.jsonl`` parts plus a ``benchmark.json`` manifest
    (``meta``, default ``data.meta``, then ``format: "wmdp"``, ``domain``, ``counts`` and
    ``content_hash``), atomically. Returns the manifest."""
    names = part_names(data.domain)
    content = {"forget_mc": data.forget_mc, "utility_mc": data.utility_mc,
               "forget_corpus": [{"text": t} for t in data.forget_corpus],
               "retain_corpus": [{"text": t} for t in data.retain_corpus]}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for role, rows in content.items():
            write_jsonl(tmp / f"{names[role]}.jsonl", rows)
        manifest = dict(data.meta if meta is None else meta)
        manifest.update(format="wmdp", domain=data.domain,
                        counts={names[role]: len(rows) for role, rows in content.items()},
                        content_hash=wmdp_fingerprint(tmp))
        write_json(tmp / MANIFEST_NAME, manifest)
    return manifest


def import_wmdp(source: str | os.PathLike, out: str | os.PathLike, *, domain: str | None = None,
                overwrite: bool = False) -> dict:
    """Copy a WMDP folder (local, or a hub dataset id holding the layout's files) into ``out``,
    validated (:func:`load_wmdp`) and rewritten as ``.jsonl`` with a manifest. The target is
    checked before any download; offline, a hub id fails at once in one line."""
    src = Path(source).expanduser()
    if src.exists():
        if not src.is_dir():
            raise UserError(f"{src} is a file; pass the WMDP folder that holds wmdp-<domain>, mmlu and the corpora")
        check_writable_dir(out, overwrite=overwrite)
        return write_wmdp(load_wmdp(src, domain), out, overwrite=overwrite, meta={
            "generator": "soulcli.import_wmdp", "source": {"type": "folder", "path": str(src.resolve())}})
    if not tofu._HUB_ID.match(str(source)):
        raise UserError(f"'{source}' is neither an existing folder nor a Hugging Face dataset id; pass a "
                        "folder in WMDP's layout")
    check_writable_dir(out, overwrite=overwrite)
    staging = Path(tempfile.mkdtemp(prefix="soulcli-wmdp-"))
    try:
        def keep(name: str) -> bool:
            top = name.split("/", 1)[0].split(".")[0]
            return name.endswith(DATA_SUFFIXES) and (top.startswith("wmdp-") or top in ("mmlu", "all")
                                                     or top.endswith(("-forget-corpus", "-retain-corpus")))

        files = tofu.fetch_hub_files(str(source), keep, staging, "a local folder in WMDP's layout")
        return write_wmdp(load_wmdp(staging, domain), out, overwrite=overwrite, meta={
            "generator": "soulcli.import_wmdp", "source": {"type": "hub", "repo_id": str(source), "files": files}})
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = [
    "DATA_SUFFIXES", "LETTERS", "NUM_CHOICES", "WMDP_SUBJECTS", "WmdpData", "data_files", "description",
    "domain_subject", "folder_domains", "import_wmdp", "load_wmdp", "mc_prompt", "part_names", "wmdp_fingerprint",
    "write_wmdp",
]
