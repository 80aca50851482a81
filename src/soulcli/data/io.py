"""File helpers: atomic folder and file writes, strict JSON and JSON lines, content hashes.

Every file soulcli writes goes through :func:`atomic_dir` (a folder) or :func:`atomic_write`
(one file), so an interrupted command never leaves a half-written result; every JSON file
through :func:`to_json`, so NaN and infinities are written as ``null`` (strict JSON).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from soulcli.errors import UserError

MANIFEST_NAME = "benchmark.json"


OUTPUT_MARK = ".soulcli.json"  # written inside every folder atomic_dir finalises
_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EEXIST,
                 errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}


def is_write_error(exc: BaseException) -> bool:
    """An OSError the user can fix (read-only, full disk, no permission, a file in the way, a
    name too long): the CLI renders it as one line naming the path (exit 2), not a traceback."""
    return isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS


def is_soulcli_output(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder soulcli wrote (it holds :data:`OUTPUT_MARK`)."""
    return (Path(path) / OUTPUT_MARK).is_file()


def mark_output(folder: str | os.PathLike) -> None:
    """Write :data:`OUTPUT_MARK` (the command line, time and pid) into ``folder``, so a later
    ``--overwrite`` knows soulcli wrote it."""
    write_json(Path(folder) / OUTPUT_MARK, {
        "written_by": "soulcli", "argv": sys.argv, "pid": os.getpid(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def check_writable_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Refuse early (before any work) a target that may not be written or replaced.

    An absent or empty folder may be written. A non-empty one is refused unless ``overwrite``
    is given and soulcli wrote it (:func:`is_soulcli_output`); a user's folder never is. A file
    in the way, a read-only parent or a name too long for the file system is refused too.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a folder; choose another output folder")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise UserError(f"output folder {path} already exists and is not empty; choose another "
                            "folder, or pass --overwrite to replace an earlier soulcli output")
        if not is_soulcli_output(path):
            raise UserError(f"output folder {path} was not written by soulcli (it has no {OUTPUT_MARK}) "
                            "and is never replaced; choose another folder")
    existing = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"cannot create {path}: {existing} is a file; choose another output folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {existing} (read-only or no permission); choose another output folder")
    name_max = os.pathconf(existing, "PC_NAME_MAX")
    too_long = [part for part in path.relative_to(existing).parts if len(os.fsencode(part)) + 24 > name_max]
    if too_long:
        raise UserError(f"the name {too_long[0][:40]}... in {path} is too long for the file system "
                        f"(at most {name_max - 24} bytes here); choose a shorter output folder name")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale(path: Path) -> list[Path]:
    """Remove the hidden ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` siblings of ``path`` left by
    killed runs (only those whose process is gone); returns what was removed."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:tmp|old)-(\d+)-[0-9a-f]+")
    removed = []
    for sibling in path.parent.iterdir() if path.parent.is_dir() else ():
        match = pattern.fullmatch(sibling.name)
        if match and not _pid_alive(int(match.group(1))):
            if sibling.is_dir():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                sibling.unlink(missing_ok=True)
            removed.append(sibling)
    return removed


@contextmanager
def _exclusive(lock: Path, on_busy: Callable[[str], None]) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on the file ``lock`` (created, holding our pid, removed
    on release). When another process holds it, ``on_busy(its pid)`` runs first: it raises to
    refuse, or returns to wait for the lock. The kernel drops a killed holder's lock, so a lock
    is never stale."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                on_busy(os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown")
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        try:  # the holder before us may have removed the file after we opened it: retry
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


@contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the output ``path`` (``.NAME.lock`` beside it): a second
    soulcli process writing the same folder is refused at once with a user error naming the
    first one's pid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def refuse(pid: str) -> None:
        raise UserError(f"another soulcli process (pid {pid}) is writing {path}; wait for it "
                        "to finish or choose another output folder")

    with _exclusive(path.parent / f".{path.name}.lock", refuse):
        yield


def build_once(path: str | os.PathLike, done: Callable[[], bool], build: Callable[[], None],
               what: str, log: Callable[[str], None]) -> bool:
    """Build the cache entry ``path`` (``build()``) unless ``done()``; returns whether it built.

    Builders of one entry take turns (a lock on ``.NAME.build.lock`` beside it, waited for,
    unlike :func:`output_lock`): a second process waits for the first, then finds the entry
    done and reuses it, so concurrent commands on one cache never fail on each other.
    """
    if done():
        return False
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path.parent / f".{path.name}.build.lock",
                    lambda pid: log(f"waiting for soulcli process {pid}, which is building {path}")):
        if done():
            log(f"reused cached {what} {path} built by another process")
            return False
        build()
    return True


@contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False,
               log: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Build a folder in a hidden temporary sibling and rename it into place on success.

    Usage::

        with atomic_dir(out) as tmp:
            (tmp / "a.json").write_text(...)

    If the block raises (or the process dies), ``path`` is untouched: either absent or the
    previous complete folder; a crash can leave only a hidden ``.<name>.tmp-*`` sibling, which
    the next run into the same parent removes (``log`` is told). The target is checked
    (:func:`check_writable_dir`) and locked (:func:`output_lock`) on entry, before the block's
    work, and the finished folder carries :data:`OUTPUT_MARK`.
    """
    path = check_writable_dir(path, overwrite=overwrite)
    parent = path.parent
    with output_lock(path):
        for stale in remove_stale(path):
            if log is not None:
                log(f"removed {stale}, left by a run that was killed")
        tmp = parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()  # respects the umask, unlike tempfile.mkdtemp (0700)
        try:
            yield tmp
            mark_output(tmp)
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


def open_resumable_dir(path: str | os.PathLike, *, resume_if: str, overwrite: bool = False) -> bool:
    """Prepare a folder that a command fills over time (hold :func:`output_lock` on it).

    An earlier soulcli output holding ``resume_if`` is resumed (returns True) unless
    ``overwrite``; otherwise the folder is checked like :func:`check_writable_dir` (so a
    user's non-empty folder is refused), an earlier soulcli output removed, and an empty
    marked folder created (returns False).
    """
    path = Path(path)
    if not overwrite and is_soulcli_output(path) and (path / resume_if).exists():
        return True
    check_writable_dir(path, overwrite=overwrite)
    if path.is_dir() and any(path.iterdir()):  # checked above: soulcli wrote it
        old = path.parent / f".{path.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.replace(path, old)
        shutil.rmtree(old, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    mark_output(path)
    return False


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
        with open(folder / name, "rb") as fh:  # in chunks: model weights may not fit in memory
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
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
