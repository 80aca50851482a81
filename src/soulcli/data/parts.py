"""A dataset part stored the ways the hub and benchmark repositories store one: ``<stem>.jsonl``
(one JSON object per line), ``<stem>.json`` (a JSON array) or Parquet shards
``<stem>/*.parquet`` (read in name order, needs pandas and pyarrow); the first found wins.
Shared by the WMDP and detoxification readers (:mod:`soulcli.data.wmdp`,
:mod:`soulcli.data.detox`), which validate the records themselves."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any, Sequence

from soulcli.data import tofu
from soulcli.errors import UserError

DATA_SUFFIXES: tuple[str, ...] = (".jsonl", ".json", ".parquet")


def find_part(folder: Path, stem: str, shard_dirs: Sequence[str] | None = None) -> list[Path] | None:
    """The file(s) holding part ``stem``: the first found of ``stem.jsonl``, ``stem.json`` and
    the Parquet shards of the first of ``shard_dirs`` (default ``(stem,)``) that has any."""
    for suffix in (".jsonl", ".json"):
        if (folder / f"{stem}{suffix}").is_file():
            return [folder / f"{stem}{suffix}"]
    for sub in shard_dirs or (stem,):
        shards = sorted((folder / sub).glob("*.parquet")) if (folder / sub).is_dir() else []
        if shards:
            return shards
    return None


def part_records(paths: list[Path]) -> list[tuple[Path, str, Any]]:
    """Every record of a part's files as ``(file, location, record)`` ("line 3", "row 3"); a
    ``.json`` file must hold an array and the part at least one record (else one UserError line)."""
    out = []
    for path in paths:
        if path.suffix == ".json" and not path.read_bytes().removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"["):
            raise UserError(f"{path} is not a JSON array; a .json part holds an array of records "
                            "(use .jsonl for one record per line)")
        records, where = tofu.read_records(path)
        out += [(path, w, r) for r, w in zip(records, where)]
    if not out:
        raise UserError(f"{paths[0]} is empty; it needs at least one record")
    return out


def text_record(path: Path, where: str, item: Any) -> str:
    """The text of a ``{"text": str}`` record (a corpus row), or one UserError line."""
    text = item.get("text") if isinstance(item, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{path} {where}: expected {{\"text\": a non-empty string}}; fix the file")
    return text


__all__ = ["DATA_SUFFIXES", "find_part", "part_records", "text_record"]
