"""Word pools for the synthetic fictitious-author benchmark (:mod:`soulcli.data.synthetic`).

Everything in ``wordpools.json`` (beside this module; data, so kept as data) is invented for
this project: the geography, the institutions, the awards and the people do not exist. Pools
that fill the same slot of a template hold values of the same grammatical form (an occupation
always carries its article, a title never does), so a wrong value swapped into a sentence reads
as naturally as the right one.

* ``FIRST_NAMES`` x ``LAST_NAMES``: the fictitious authors (forget / retain / holdout), 64 x 64
  = 4096 full names, sampled without replacement.
* ``CLASSIC_FIRST_NAMES``, ``CLASSIC_INITIALS``, ``CLASSIC_LAST_NAMES``: the "classic" authors
  of the general-knowledge set (never forgotten), rendered "<first> <initial>. <last>" so they
  cannot be mistaken for fictitious authors.
* ``GEOGRAPHY``: an invented world, one row per country: (country, capital, three other cities,
  language, currency, longest river, highest mountain).
* ``GENRES`` .. ``SETTINGS``: attribute pools of fictitious authors; ``TITLE_ADJECTIVES`` and
  ``TITLE_NOUNS``: book titles are assembled from these by fixed patterns (2-4 words), unique.

Name pools are disjoint: a fictitious author's first or last name never appears among the
"classic" authors of the general-knowledge set nor in the geography, so general facts never
mention a fictitious author. ``tests/data`` checks these invariants.

Changing any pool changes every benchmark generated from it: the generator's version number
(``soulcli.data.synthetic.GENERATOR_VERSION``) must then be bumped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


_POOLS = {name: _tuples(v) for name, v in
          json.loads((Path(__file__).with_name("wordpools.json")).read_text(encoding="utf-8")).items()}

FIRST_NAMES: tuple[str, ...] = _POOLS["FIRST_NAMES"]
LAST_NAMES: tuple[str, ...] = _POOLS["LAST_NAMES"]
CLASSIC_FIRST_NAMES: tuple[str, ...] = _POOLS["CLASSIC_FIRST_NAMES"]
CLASSIC_INITIALS: tuple[str, ...] = _POOLS["CLASSIC_INITIALS"]
CLASSIC_LAST_NAMES: tuple[str, ...] = _POOLS["CLASSIC_LAST_NAMES"]
GEOGRAPHY: tuple[tuple[str, str, tuple[str, str, str], str, str, str, str], ...] = _POOLS["GEOGRAPHY"]
GENRES: tuple[str, ...] = _POOLS["GENRES"]
OCCUPATIONS: tuple[str, ...] = _POOLS["OCCUPATIONS"]
AWARDS: tuple[str, ...] = _POOLS["AWARDS"]
THEMES: tuple[str, ...] = _POOLS["THEMES"]
PUBLISHERS: tuple[str, ...] = _POOLS["PUBLISHERS"]
INSTITUTIONS: tuple[str, ...] = _POOLS["INSTITUTIONS"]
HOBBIES: tuple[str, ...] = _POOLS["HOBBIES"]
INSTRUMENTS: tuple[str, ...] = _POOLS["INSTRUMENTS"]
SETTINGS: tuple[str, ...] = _POOLS["SETTINGS"]
TITLE_ADJECTIVES: tuple[str, ...] = _POOLS["TITLE_ADJECTIVES"]
TITLE_NOUNS: tuple[str, ...] = _POOLS["TITLE_NOUNS"]
