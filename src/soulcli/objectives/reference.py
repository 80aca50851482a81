"""The reference cache: what the starting model said about each item, computed once.

Objectives that compare the trained model with the model it started from (NPO, DPO, a KL retain
term, RMU's retain term) do not keep a second model in memory. Before the first step,
``Objective.setup`` runs the starting model over every batch the run will use and stores, per
item index, only the quantities the loss needs. Each entry carries a fingerprint of the item's
tokens, so a stale cache (other data under the same key) is recomputed rather than trusted,
and a step that meets an item setup never saw fails loudly.
"""

from __future__ import annotations

import io
import pathlib
import pickle
import zlib
from typing import Any

import torch

from soulcli.data.io import atomic_write

Batch = dict[str, torch.Tensor]
CACHE_FORMAT = 1


def fingerprints(data: Batch) -> list[int]:
    """A CRC-32 of each row's non-padding token ids: equal items, equal fingerprints."""
    ids = data["input_ids"].detach().to("cpu", torch.int64)
    keep = data["attention_mask"].detach().to("cpu").bool()
    return [zlib.crc32(ids[row][keep[row]].numpy().tobytes()) for row in range(ids.shape[0])]


def select_rows(data: Batch, rows: list[int]) -> Batch:
    """The sub-batch made of ``rows``."""
    sel = torch.tensor(rows, dtype=torch.long, device=data["input_ids"].device)
    return {key: value.index_select(0, sel.to(value.device)) for key, value in data.items()}


class ReferenceCache:
    """Per-table, per-item reference values, e.g. ``tables["forget_logp"][index] = S_ref``.

    ``meta`` records the settings the values depend on (a RMU layer, a KL top-k); a cache file
    whose meta differs is ignored.
    """

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = dict(meta)
        self.tables: dict[str, dict[int, Any]] = {}
        self.prints: dict[str, dict[int, int]] = {}

    def missing_rows(self, table: str, data: Batch) -> list[int]:
        """Rows of ``data`` whose item is not cached in ``table`` (or cached for other tokens)."""
        known = self.prints.get(table, {})
        index = data["index"].tolist()
        return [row for row, fp in enumerate(fingerprints(data)) if known.get(index[row]) != fp]

    def put(self, table: str, data: Batch, rows: list[int], values: list[Any]) -> None:
        index = data["index"].tolist()
        prints = fingerprints(data)
        for row, value in zip(rows, values):
            self.tables.setdefault(table, {})[index[row]] = value
            self.prints.setdefault(table, {})[index[row]] = prints[row]

    def rows(self, table: str, data: Batch) -> list[Any]:
        """The cached values for the rows of ``data``, in row order."""
        missing = self.missing_rows(table, data)
        if missing:
            first = int(data["index"][missing[0]])
            raise RuntimeError(
                f"no reference value in '{table}' for item {first} (or its tokens changed): "
                "setup() must be called with every batch of the run before the first step"
            )
        values = self.tables[table]
        return [values[i] for i in data["index"].tolist()]

    def save(self, path: pathlib.Path) -> None:
        """Write atomically (see :func:`soulcli.data.io.atomic_write`)."""
        payload = {
            "format": CACHE_FORMAT,
            "meta": self.meta,
            "tables": self.tables,
            "prints": self.prints,
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write(path, buffer.getvalue())

    @classmethod
    def load(cls, path: pathlib.Path, meta: dict[str, Any]) -> "ReferenceCache":
        """The cache in ``path`` if it exists with the same format and meta, else an empty one."""
        cache = cls(meta)
        if not path.is_file():
            return cache
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError):
            return cache  # unreadable: recomputed and written again by setup()
        if (
            isinstance(payload, dict)
            and payload.get("format") == CACHE_FORMAT
            and payload.get("meta") == cache.meta
        ):
            cache.tables = payload["tables"]
            cache.prints = payload["prints"]
        return cache
