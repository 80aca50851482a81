"""TOFU-format benchmark folders: split names, reading and validating splits, importing TOFU.

A benchmark folder holds one file per split, named after the split, in the file names of the
``locuslab/TOFU`` dataset (``full.json``, ``forget10.json``, ``forget10_perturbed.json``, ...),
plus soulcli's ``holdout`` (authors never trained on, for membership-inference attacks) and
``general_knowledge`` (the question/answer pairs of ``real_authors_perturbed`` and
``world_facts_perturbed``, trained on alongside ``full``), and a ``benchmark.json`` manifest.

Split kinds and their required fields:

* question/answer splits (``full``, ``forgetXX``, ``retainXX``, ``general_knowledge``,
  ``holdout``): ``question``, ``answer``;
* perturbed author splits (``forgetXX_perturbed``, ``retain_perturbed``): also
  ``paraphrased_question``, ``paraphrased_answer`` and ``perturbed_answer`` (a list of wrong
  answers of the paraphrased answer's form);
* general-knowledge splits (``real_authors_perturbed``, ``world_facts_perturbed``):
  ``question``, ``answer``, ``perturbed_answer``.

Files may be JSON lines or one JSON array (both circulate), ``.jsonl``, or ``.parquet`` when
pandas is installed. soulcli always writes JSON lines.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from soulcli.data.io import (
    MANIFEST_NAME,
    check_writable_dir,
    read_manifest,
    write_benchmark_dir,
)
from soulcli.errors import UserError

FORGET_PERCENTAGES: tuple[int, ...] = (1, 5, 10)

QA_SPLITS: tuple[str, ...] = (
    "full", "forget01", "forget05", "forget10", "retain99", "retain95", "retain90",
)
PERTURBED_SPLITS: tuple[str, ...] = (
    "forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed",
)
GENERAL_SPLITS: tuple[str, ...] = ("real_authors_perturbed", "world_facts_perturbed")
#: The file stems of the ``locuslab/TOFU`` dataset.
TOFU_SPLIT_NAMES: tuple[str, ...] = QA_SPLITS + PERTURBED_SPLITS + GENERAL_SPLITS
#: soulcli's additions: never-trained authors, and the general facts as training pairs.
EXTRA_SPLIT_NAMES: tuple[str, ...] = ("holdout", "general_knowledge")
#: Every canonical split (file stem) of a soulcli benchmark folder, in writing order.
SPLIT_NAMES: tuple[str, ...] = TOFU_SPLIT_NAMES + EXTRA_SPLIT_NAMES

#: Splits an import needs; the general-knowledge and holdout splits may be absent.
REQUIRED_IMPORT_SPLITS: tuple[str, ...] = QA_SPLITS + PERTURBED_SPLITS

QA_FIELDS: tuple[str, ...] = ("question", "answer")
PERTURBED_FIELDS: tuple[str, ...] = QA_FIELDS + (
    "paraphrased_question", "paraphrased_answer", "perturbed_answer",
)
GENERAL_FIELDS: tuple[str, ...] = QA_FIELDS + ("perturbed_answer",)

SPLIT_SUFFIXES: tuple[str, ...] = (".json", ".jsonl", ".parquet")

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HOLDOUT_ALIASES: tuple[str, ...] = ("holdout10", "holdout05", "holdout01")


def forget_split_names(pct: int) -> tuple[str, str, str]:
    """``(forget, forget_perturbed, retain)`` split names for a forget percentage of 1, 5 or 10."""
    value = None
    if isinstance(pct, bool):
        value = None
    elif isinstance(pct, int):
        value = pct
    elif isinstance(pct, float) and pct.is_integer():
        value = int(pct)
    elif isinstance(pct, str) and pct.strip().isdigit():
        value = int(pct.strip())
    if value not in FORGET_PERCENTAGES:
        raise UserError(
            f"unsupported forget percentage {pct!r}; choose one of "
            f"{', '.join(str(p) for p in FORGET_PERCENTAGES)} (TOFU's forget01/05/10 splits)"
        )
    return f"forget{value:02d}", f"forget{value:02d}_perturbed", f"retain{100 - value}"


def required_fields(name: str) -> tuple[str, ...]:
    """The fields every record of split ``name`` must have (by the split's kind)."""
    if name in GENERAL_SPLITS:
        return GENERAL_FIELDS
    if name in PERTURBED_SPLITS:
        return PERTURBED_FIELDS
    if name.endswith("_perturbed"):  # a custom perturbed split: the common minimum
        return GENERAL_FIELDS
    return QA_FIELDS


# --- reading -------------------------------------------------------------------------------


def _split_stem(name: str) -> str:
    name = str(name)
    for suffix in SPLIT_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise UserError(f"invalid split name {name!r}; use a file stem like 'forget10'")
    return name


def _listing(folder: Path) -> str:
    files = sorted(
        p.name for p in folder.iterdir() if p.is_file() and p.suffix in SPLIT_SUFFIXES
    )
    return ", ".join(files) if files else "no split files"


def find_split_file(data_dir: str | os.PathLike, name: str) -> Path:
    """The file holding split ``name`` in ``data_dir`` (``.json``, then ``.jsonl``, ``.parquet``)."""
    folder = Path(data_dir)
    stem = _split_stem(name)
    if not folder.is_dir():
        raise UserError(
            f"benchmark folder {folder} does not exist; generate a synthetic benchmark or "
            "import TOFU into it first"
        )
    for suffix in SPLIT_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    hint = ""
    manifest = read_manifest(folder) or {}
    if stem in manifest.get("missing_splits", []):
        hint = f" (the benchmark was imported without a '{stem}' split)"
    raise UserError(
        f"no split '{stem}' in {folder}{hint}: looked for "
        f"{', '.join(stem + s for s in SPLIT_SUFFIXES)}; the folder has: {_listing(folder)}"
    )


def _parse_json_text(path: Path, text: str) -> tuple[list[Any], list[str]]:
    """Records and a location label per record ("line 3" / "item 3")."""
    body = text.lstrip()
    if body.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}); "
                "fix the file or re-create it"
            ) from None
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON array of records or JSON lines")
        return data, [f"item {i}" for i in range(1, len(data) + 1)]
    records: list[Any] = []
    where: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            whole = _parse_whole_document(text)
            if whole is not None:
                return whole, [f"item {i}" for i in range(1, len(whole) + 1)]
            raise UserError(
                f"{path}: malformed JSON on line {lineno} ({exc.msg}); expected one JSON object "
                "per line (or a single JSON array); fix the file or re-create it"
            ) from None
        where.append(f"line {lineno}")
    return records, where


def _parse_whole_document(text: str) -> list | None:
    """A pretty-printed single record or ``{"data": [...]}``, as a list; None otherwise."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(obj, dict):
        if "question" in obj:
            return [obj]
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
    return None


def _read_parquet(path: Path) -> tuple[list[Any], list[str]]:
    try:
        import pandas as pd  # optional
    except ImportError:
        raise UserError(
            f"{path} is a Parquet file, which needs pandas and pyarrow (pip install pandas "
            "pyarrow); or convert it to JSON lines"
        ) from None
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow missing, corrupt file, ...
        raise UserError(f"could not read {path} ({exc}); convert it to JSON lines") from None
    records = []
    for row in frame.to_dict("records"):
        records.append({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in row.items()})
    return records, [f"row {i}" for i in range(1, len(records) + 1)]


def read_records(path: str | os.PathLike) -> tuple[list[Any], list[str]]:
    """Raw records of a split file and a location label per record, without validation."""
    path = Path(path)
    if path.suffix == ".parquet":
        return _read_parquet(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"could not read {path} ({exc.strerror})") from None
    try:
        return _parse_json_text(path, text)
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to hold records; expected one JSON object "
                        "per line (or a single JSON array of objects)") from None


def validate_records(path: Path, name: str, records: list[Any], where: list[str]) -> list[dict]:
    """Check the fields of split ``name``'s records; normalise a lone perturbed answer to a list."""
    if not records:
        raise UserError(
            f"{path} holds no records; split '{name}' must not be empty (regenerate or re-import "
            "the benchmark)"
        )
    fields = required_fields(name)
    out = []
    for record, loc in zip(records, where):
        if not isinstance(record, dict):
            raise UserError(f"{path} {loc}: expected a JSON object, got {type(record).__name__}")
        missing = [f for f in fields if f not in record]
        if missing:
            raise UserError(
                f"{path} {loc}: missing field(s) {', '.join(missing)}; a '{name}' split needs "
                f"{', '.join(fields)} (regenerate or re-import the benchmark)"
            )
        for f in fields:
            value = record[f]
            if f == "perturbed_answer":
                if isinstance(value, str):
                    record = {**record, f: [value]}
                elif (
                    not isinstance(value, (list, tuple))
                    or not value
                    or not all(isinstance(v, str) for v in value)
                ):
                    raise UserError(
                        f"{path} {loc}: field perturbed_answer must be a non-empty list of "
                        "strings; fix the record"
                    )
                elif isinstance(value, tuple):
                    record = {**record, f: list(value)}
            elif not isinstance(value, str):
                raise UserError(
                    f"{path} {loc}: field {f} must be a string, got {type(value).__name__}; "
                    "fix the record"
                )
        out.append(record)
    return out


def load_split(data_dir: str | os.PathLike, name: str) -> list[dict]:
    """Read and validate split ``name`` of the benchmark folder ``data_dir``.

    Raises :class:`~soulcli.errors.UserError` naming the file and the fix for a missing file
    (listing the files present), malformed JSON (with the line), missing fields, or no records.
    """
    path = find_split_file(data_dir, name)
    records, where = read_records(path)
    return validate_records(path, _split_stem(name), records, where)


def available_splits(data_dir: str | os.PathLike) -> list[str]:
    """Canonical split names that have a file in ``data_dir`` (in :data:`SPLIT_NAMES` order)."""
    folder = Path(data_dir)
    return [
        n for n in SPLIT_NAMES if any((folder / f"{n}{s}").is_file() for s in SPLIT_SUFFIXES)
    ]


# --- importing -----------------------------------------------------------------------------


def _qa_key(record: dict) -> tuple[str, str]:
    return record["question"], record["answer"]


def _normalise(record: dict) -> dict:
    """Canonical fields first (in TOFU's order), then any extra fields as they were."""
    order = [f for f in PERTURBED_FIELDS if f in record]
    return {**{f: record[f] for f in order}, **{k: v for k, v in record.items() if k not in order}}


def _import_folder(folder: Path, out_dir, source_info: dict, overwrite: bool) -> dict:
    present = {n for n in SPLIT_NAMES + _HOLDOUT_ALIASES
               if any((folder / f"{n}{s}").is_file() for s in SPLIT_SUFFIXES)}
    missing_required = [n for n in REQUIRED_IMPORT_SPLITS if n not in present]
    if missing_required:
        raise UserError(
            f"{folder} is not a TOFU folder: missing {', '.join(missing_required)} "
            f"(it has: {_listing(folder)}); pass the folder holding TOFU's full.json, "
            "forgetXX(.json), retainXX, and *_perturbed files"
        )
    splits: dict[str, list[dict]] = {}
    for name in SPLIT_NAMES:
        if name in present:
            splits[name] = [_normalise(r) for r in load_split(folder, name)]
    derived: dict[str, str] = {}
    if "holdout" not in splits:
        for alias in _HOLDOUT_ALIASES:
            if alias in present:
                splits["holdout"] = [_normalise(r) for r in load_split(folder, alias)]
                derived["holdout"] = f"copied from {find_split_file(folder, alias).name}"
                break
    if "general_knowledge" not in splits:
        parts = [n for n in GENERAL_SPLITS if n in splits]
        if parts:
            splits["general_knowledge"] = [
                {"question": r["question"], "answer": r["answer"]} for n in parts for r in splits[n]
            ]
            derived["general_knowledge"] = "question/answer pairs of " + " + ".join(parts)
    splits = {n: splits[n] for n in SPLIT_NAMES if n in splits}

    full = [_qa_key(r) for r in splits["full"]]
    checks = {
        "full_is_retain90_then_forget10": full
        == [_qa_key(r) for r in splits["retain90"] + splits["forget10"]],
    }
    for pct in FORGET_PERCENTAGES:
        forget, forget_p, retain = forget_split_names(pct)
        checks[f"{retain}_plus_{forget}_is_full"] = sorted(
            [_qa_key(r) for r in splits[retain] + splits[forget]]
        ) == sorted(full)
        checks[f"{forget_p}_matches_{forget}"] = [_qa_key(r) for r in splits[forget_p]] == [
            _qa_key(r) for r in splits[forget]
        ]
    meta = {
        "generator": "soulcli.import_tofu",
        "source": source_info,
        "missing_splits": [n for n in SPLIT_NAMES if n not in splits],
        "derived_splits": derived,
        "checks": checks,
    }
    return write_benchmark_dir(splits, out_dir, meta=meta, overwrite=overwrite)


def _check_hub_reachable() -> None:
    """Fail fast (instead of minutes of retries) when offline: HF_HUB_OFFLINE, or the hub's
    host does not resolve and no proxy is configured."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ConnectionError("HF_HUB_OFFLINE is set")
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    host = urlparse(constants.ENDPOINT).hostname
    if host:
        try:
            socket.getaddrinfo(host, 443)
        except OSError as exc:
            raise ConnectionError(f"cannot resolve {host}") from exc


def _list_hub_files(repo_id: str) -> list[str]:
    import huggingface_hub

    _check_hub_reachable()
    return list(huggingface_hub.list_repo_files(repo_id, repo_type="dataset"))


def _download_hub_file(repo_id: str, filename: str) -> str:
    import huggingface_hub

    return huggingface_hub.hf_hub_download(repo_id, filename, repo_type="dataset")


def fetch_hub_files(repo_id: str, keep, staging: Path, what: str) -> list[str]:
    """Download the files of the hub dataset ``repo_id`` that ``keep(path)`` accepts into
    ``staging`` (paths kept); returns them. Every failure is one :class:`UserError` line: no
    huggingface_hub, offline / unknown repository (``what`` names the local alternative),
    Parquet without pandas, a broken download."""
    try:
        files = _list_hub_files(repo_id)
    except ImportError:
        raise UserError(f"importing '{repo_id}' needs huggingface_hub (pip install huggingface_hub); "
                        f"or pass {what}") from None
    except Exception as exc:  # offline, DNS, HTTP errors, unknown repository
        kind = type(exc).__name__
        found = "no such dataset on the Hugging Face hub" if "NotFound" in kind else "could not reach the Hugging Face hub"
        reason = " ".join(f"{kind}: {exc}".split())[:200]
        raise UserError(f"{found} for '{repo_id}' ({reason}); download it where there is network "
                        f"and pass {what} instead") from None
    wanted = [f for f in files if keep(f)]
    if any(f.endswith(".parquet") for f in wanted) and importlib.util.find_spec("pandas") is None:
        raise UserError(f"the hub dataset '{repo_id}' is stored as Parquet, which needs pandas and pyarrow "
                        f"(pip install pandas pyarrow); or pass {what}")
    for remote in wanted:
        try:
            local = _download_hub_file(repo_id, remote)
        except Exception as exc:
            raise UserError(f"could not download {remote} from the hub dataset '{repo_id}' "
                            f"({type(exc).__name__}); retry, or pass {what}") from None
        (staging / remote).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, staging / remote)
    return wanted


def _hub_file_for(name: str, files: list[str]) -> str | None:
    """The repository file holding split ``name`` (a config name): ``name.json`` anywhere,
    else ``name.jsonl``, else a single Parquet file in a ``name/`` folder or named ``name-*``."""
    for suffix in (".json", ".jsonl"):
        hits = sorted(f for f in files if f.rsplit("/", 1)[-1] == f"{name}{suffix}")
        if hits:
            return min(hits, key=len)
    parquet = sorted(
        f for f in files if f.endswith(".parquet")
        and (f"/{name}/" in f"/{f}" or f.rsplit("/", 1)[-1].startswith(f"{name}-"))
    )
    return parquet[0] if len(parquet) == 1 else None


def _import_hub(repo_id: str, out_dir, overwrite: bool) -> dict:
    try:
        import huggingface_hub  # noqa: F401  (datasets depends on it too)
    except ImportError:
        raise UserError(
            f"importing '{repo_id}' from the Hugging Face hub needs huggingface_hub "
            "(pip install huggingface_hub); or pass a local folder of TOFU files instead"
        ) from None
    try:
        files = _list_hub_files(repo_id)
    except Exception as exc:  # offline, DNS, HTTP errors, unknown repository
        kind = type(exc).__name__
        if "NotFound" in kind:
            raise UserError(
                f"no dataset '{repo_id}' on the Hugging Face hub ({kind}); check the id "
                "(e.g. locuslab/TOFU) or pass a local folder of TOFU files"
            ) from None
        reason = " ".join(f"{kind}: {exc}".split())[:200]
        raise UserError(
            f"could not reach the Hugging Face hub for '{repo_id}' ({reason}); download the "
            "TOFU files where there is network and pass their local folder instead"
        ) from None
    wanted = {n: _hub_file_for(n, files) for n in SPLIT_NAMES + _HOLDOUT_ALIASES}
    wanted = {n: f for n, f in wanted.items() if f}
    staging = Path(tempfile.mkdtemp(prefix="soulcli-tofu-"))
    try:
        for name, remote in wanted.items():
            try:
                local = _download_hub_file(repo_id, remote)
            except Exception as exc:
                raise UserError(
                    f"could not download {remote} from the hub dataset '{repo_id}' "
                    f"({type(exc).__name__}); retry, or pass a local folder of TOFU files"
                ) from None
            shutil.copyfile(local, staging / f"{name}{Path(remote).suffix}")
        info = {"type": "hub", "repo_id": repo_id, "files": wanted}
        return _import_folder(staging, out_dir, info, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def import_tofu(source: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> dict:
    """Copy TOFU (a local folder of its files, or a hub id like ``locuslab/TOFU``) into a
    soulcli benchmark folder: JSON lines, validated, with a ``benchmark.json`` manifest.

    ``general_knowledge`` is derived from the real-author and world-fact splits when absent;
    a missing ``holdout`` (TOFU has none; ``holdoutXX`` files are used when present) is
    recorded in the manifest's ``missing_splits``. Returns the manifest.
    """
    src = Path(source).expanduser()
    if src.exists():
        if not src.is_dir():
            raise UserError(f"{src} is a file; pass the folder that holds the TOFU .json files")
        check_writable_dir(out_dir, overwrite=overwrite)
        info = {"type": "folder", "path": str(src.resolve())}
        return _import_folder(src, out_dir, info, overwrite)
    if _HUB_ID.match(str(source)):
        check_writable_dir(out_dir, overwrite=overwrite)
        return _import_hub(str(source), out_dir, overwrite)
    raise UserError(
        f"'{source}' is neither an existing folder nor a Hugging Face dataset id like "
        "locuslab/TOFU; pass a folder of TOFU .json files"
    )


__all__ = [
    "SPLIT_NAMES", "TOFU_SPLIT_NAMES", "EXTRA_SPLIT_NAMES", "QA_SPLITS", "PERTURBED_SPLITS",
    "GENERAL_SPLITS", "FORGET_PERCENTAGES", "forget_split_names", "required_fields",
    "find_split_file", "read_records", "validate_records", "load_split", "available_splits",
    "import_tofu", "MANIFEST_NAME",
]
