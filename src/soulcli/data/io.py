"""File helpers: atomic folder and file writes, strict JSON and JSON lines, content hashes.

Every file soulcli writes goes through :func:`atomic_dir` (a folder) or :func:`atomic_write`
(one file), so an interrupted command never leaves a half-written result; every JSON file
through :func:`to_json`, so NaN and infinities are written as ``null`` (strict JSON).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

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


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to a hidden sibling and rename it over ``path``.

    Readers see the old file or the new one, never a part; a crash can leave only a hidden
    ``.<name>.tmp-*`` sibling. The parent folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) replaced by None, containers walked."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(obj: Any, *, indent: int | None = None) -> str:
    """Strict JSON text: NaN and infinities as ``null``, unknown objects (paths) as ``str``,
    UTF-8 text kept as is, key order kept."""
    return json.dumps(_finite(obj), ensure_ascii=False, indent=indent, default=str, allow_nan=False)


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping]) -> None:
    """Write one JSON object per line, ``\\n`` line endings, UTF-8."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for record in records:
            fh.write(to_json(record))
            fh.write("\n")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Pretty-printed strict JSON (see :func:`to_json`) with a trailing newline, atomically."""
    return atomic_write(path, to_json(obj, indent=2) + "\n")


def files_fingerprint(folder: str | os.PathLike, suffixes: Iterable[str]) -> str:
    """:func:`content_hash` over the folder's files with these suffixes, its manifest excluded:
    the key of a data folder's content wherever the folder lies."""
    suffixes = tuple(suffixes)
    folder = Path(folder)
    names = [p.name for p in folder.iterdir()
             if p.is_file() and p.suffix in suffixes and p.name != MANIFEST_NAME and not p.name.startswith(".")]
    return content_hash(folder, names)


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
