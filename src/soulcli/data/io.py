"""File helpers for benchmark folders: atomic folder writes, JSON lines, content hashes."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from soulcli.errors import UserError

MANIFEST_NAME = "benchmark.json"


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def check_writable_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Refuse early (before any work) a target that exists and may not be replaced."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a folder; choose another output folder")
    if path.exists() and not overwrite and not _is_empty_dir(path):
        raise UserError(
            f"output folder {path} already exists and is not empty; choose another folder "
            "or allow overwriting it"
        )
    return path


@contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder in a hidden temporary sibling and rename it into place on success.

    Usage::

        with atomic_dir(out) as tmp:
            (tmp / "a.json").write_text(...)

    If the block raises (or the process dies), ``path`` is untouched: either absent or the
    previous complete folder; a crash can leave only a hidden ``.<name>.tmp-*`` sibling.
    An existing empty folder is replaced; a non-empty one only with ``overwrite=True``.
    """
    path = check_writable_dir(path, overwrite=overwrite)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()  # respects the umask, unlike tempfile.mkdtemp (0700)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        check_writable_dir(path, overwrite=overwrite)  # something may have appeared meanwhile
        if path.exists():
            old = parent / f".{path.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def dumps_record(record: Mapping) -> str:
    """One record as one JSON line (UTF-8 text kept as is, key order kept)."""
    return json.dumps(record, ensure_ascii=False)


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping]) -> None:
    """Write one JSON object per line, ``\\n`` line endings, UTF-8."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for record in records:
            fh.write(dumps_record(record))
            fh.write("\n")


def write_json(path: str | os.PathLike, obj) -> None:
    """Pretty-printed JSON with a trailing newline (for manifests)."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(json.dumps(obj, ensure_ascii=False, indent=2))
        fh.write("\n")


def content_hash(folder: str | os.PathLike, names: Iterable[str]) -> str:
    """sha256 over the named files of ``folder`` (in sorted name order, names included)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode("utf-8") + b"\0")
        digest.update((folder / name).read_bytes())
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The folder's ``benchmark.json`` as a dict, or None if it has none (or it is unreadable)."""
    path = Path(folder) / MANIFEST_NAME
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


_BAD_NAME_CHARS = set('/\\:*?"<>| \t\n')


def write_benchmark_dir(
    splits: Mapping[str, list],
    out_dir: str | os.PathLike,
    *,
    meta: Mapping | None = None,
    overwrite: bool = False,
) -> dict:
    """Write ``<split>.json`` (JSON lines) per split plus a ``benchmark.json`` manifest, atomically.

    The manifest is ``meta`` followed by ``counts`` (records per split, in the order given)
    and ``content_hash`` (see :func:`content_hash`, over the split files only). Returns it.
    """
    for name in splits:
        if (
            not isinstance(name, str)
            or not name
            or name.startswith(".")
            or any(c in _BAD_NAME_CHARS for c in name)
            or name == Path(MANIFEST_NAME).stem
        ):
            raise UserError(f"invalid split name {name!r}; use a plain file stem like 'forget10'")
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        files = []
        for name, records in splits.items():
            write_jsonl(tmp / f"{name}.json", records)
            files.append(f"{name}.json")
        manifest = dict(meta or {})
        manifest["format"] = "json-lines"
        manifest["counts"] = {name: len(records) for name, records in splits.items()}
        manifest["content_hash"] = content_hash(tmp, files)
        write_json(tmp / MANIFEST_NAME, manifest)
    return manifest
