"""Refusal answers ("I don't know" style) for the `po`, `dpo` and `idkdpo` objectives.

The built-in set lives next to this module in ``refusals.txt`` (written for soulcli, one answer
per line); a user file in the same format replaces it. Each forget item gets one refusal, picked
deterministically from the item's index and a seed, so a run and its reference cache agree on
which refusal every item is trained towards.
"""

from __future__ import annotations

import hashlib
import pathlib
from importlib import resources

from soulcli.errors import UserError

BUILTIN_FILE = "refusals.txt"


def _parse(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def load_refusals(path: str | pathlib.Path | None = None) -> list[str]:
    """The refusal answers in ``path`` (one per line, ``#`` comments), or the built-in set."""
    if path is None:
        return _parse(resources.files(__package__).joinpath(BUILTIN_FILE).read_text("utf-8"))
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(
            f"refusal file '{path}' does not exist; give a text file with one refusal per line"
        )
    refusals = _parse(path.read_text("utf-8"))
    if not refusals:
        raise UserError(f"refusal file '{path}' holds no refusal; write one answer per line")
    return refusals


def pick_refusal(refusals: list[str], item_index: int, seed: int) -> str:
    """The refusal for forget item ``item_index``: the same for a given seed in every process."""
    if not refusals:
        raise UserError("the refusal set is empty; give a file with one refusal per line")
    digest = hashlib.blake2b(f"{seed}:{item_index}".encode(), digest_size=8).digest()
    return refusals[int.from_bytes(digest, "little") % len(refusals)]
