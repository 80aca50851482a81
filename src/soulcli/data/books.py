"""The built-in MUSE-style corpus: invented "books", small enough for a tiny model on a CPU.

MUSE (Shi et al. 2024) unlearns a corpus (Harry Potter books, BBC news) and probes what is
left of it: verbatim continuation (VerbMem), answers to questions about its facts (KnowMem)
and membership (PrivLeak). This module writes a corpus of the same shape
(:class:`~soulcli.data.muse.MuseData`) that needs no download and that the built-in model
(``soulcli.models.builtin``: ~2-3M parameters, 256 positions) memorises in minutes:

* a book has a cast of :data:`CAST` invented people (names from :mod:`soulcli.data.wordpools`,
  unique over the corpus) and an invented home country; each of its passages (40-90 words, one
  line, single spaces) states :data:`FACTS_PER_PASSAGE` facts about the cast (a birthplace, a
  year, a trade, a friend, ...) among plain narrative sentences that state none;
* each (person, kind of fact) is stated once, so every question has one short answer (a name,
  a place, a year, ...) that occurs verbatim in its passage;
* books are dealt to splits in quarters: forget, retain2 and holdout get ``num_books // 4``
  books each, retain1 the rest. holdout books are drawn exactly like the others and never
  trained on;
* ``verbmem/forget``: per forget passage, ``prompt`` = its first third of words, ``gt`` the
  rest (``prompt + " " + gt`` is the passage); ``knowmem/forget_qa``: every fact of the forget
  books; ``knowmem/retain_qa``: every fact of the retain2 books (MUSE asks its retain questions
  about retain2); the few-shot sets are :data:`ICL_SHOTS` facts each of the retain1 books, never
  evaluated; ``privleak`` = forget, retain2 and holdout passages (``raw/holdout`` too).

The defaults (24 books of 12 passages) give 288 passages, 18,590 words (13,967 trained on;
about 16k tokens of the built-in tokenizer), 72 VerbMem items, 144 + 144 KnowMem questions;
``num_books=4, passages_per_book=4`` is the smallest corpus (16 passages), for tests.
Generation is deterministic for a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Annotated

from soulcli import schema
from soulcli.data import wordpools as W
from soulcli.data.muse import MuseData
from soulcli.data.synthetic import _rng, _Titles
from soulcli.schema import Range

GENERATOR_NAME = "soulcli.books"
#: Bump whenever templates, pools or sampling change (a seed then gives different data).
GENERATOR_VERSION = 1

CAST = 3  # people per book
FACTS_PER_PASSAGE = 2
ICL_SHOTS = 4  # few-shot pairs per KnowMem prompt
WORDS = (40, 90)  # passage length bounds (inclusive)


@dataclass(frozen=True)
class Fact:
    """A kind of fact: the sentence stating it and the question asking for ``{v}`` ({a} = the person)."""

    key: str
    sentence: str
    question: str


FACTS: tuple[Fact, ...] = (
    Fact("birthplace", "{a} was born in the city of {v}.", "In which city was {a} born?"),
    Fact("birth_year", "{a} came into the world in the year {v}.", "In what year was {a} born?"),
    Fact("trade", "By trade, {a} was {v}.", "What was the trade of {a}?"),
    Fact("instrument", "Every evening {a} played the {v} by the window.",
         "Which instrument did {a} play every evening?"),
    Fact("school", "As a young person, {a} had studied at {v}.", "Where had {a} studied?"),
    Fact("river", "Once {a} crossed the {v} on a small ferry.", "Which river did {a} cross on a small ferry?"),
    Fact("mountain", "For years {a} dreamed of climbing {v}.", "Which mountain did {a} dream of climbing?"),
    Fact("pastime", "In quiet hours {a} turned to {v}.", "What did {a} turn to in quiet hours?"),
    Fact("friend", "The oldest friend of {a} was {v}.", "Who was the oldest friend of {a}?"),
)
MAX_PASSAGES_PER_BOOK = len(FACTS) * CAST // FACTS_PER_PASSAGE
MAX_BOOKS = len(W.FIRST_NAMES) * len(W.LAST_NAMES) // CAST

# Narrative sentences that state no fact ({a} = a person of the passage, {c} = a city of the
# book's country, {t} = a theme).
FILLERS: tuple[str, ...] = (
    "The morning was grey over {c}, and the streets were still wet.",
    "Nobody in the house spoke of {t} that year.",
    "Rain tapped on the shutters while the kettle began to sing.",
    "{a} walked along the harbour and counted the boats twice.",
    "A letter arrived from {c}, but it stayed sealed on the table.",
    "One by one the lamps of {c} were lit against the dusk.",
    "{a} wrote a few lines in a notebook and then stopped.",
    "Somewhere below a dog barked twice and fell silent again.",
    "For a long while {a} sat and thought about {t}.",
    "The bread was cold, and the tea had grown far too strong.",
    "By noon the market square of {c} was loud with carts.",
    "{a} laughed at an old joke that nobody else remembered.",
    "The wind carried the smell of salt and smoke through the alley.",
    "That night {a} could not sleep and listened to the clock.",
    "Old stories about {t} still went round the kitchens of {c}.",
    "A cart rattled past, and then the road was empty once more.",
)

NumBooks = Annotated[int, Range(ge=4, le=MAX_BOOKS),
                     "invented books, dealt in quarters to forget / retain1 / retain2 / holdout"]
PassagesPerBook = Annotated[int, Range(ge=4, le=MAX_PASSAGES_PER_BOOK),
                            f"passages per book, each stating {FACTS_PER_PASSAGE} facts"]


@dataclass(frozen=True)
class _Book:
    title: str
    split: str
    cast: tuple[str, ...]
    passages: tuple[str, ...]
    qa: tuple[dict, ...]


def _values(rng: random.Random, cast: tuple[str, ...], country: tuple) -> dict[str, dict[str, str]]:
    """Each person's value for every kind of fact."""
    cities = [country[1], *country[2]]
    out = {}
    for i, person in enumerate(cast):
        out[person] = {
            "birthplace": rng.choice(cities),
            "birth_year": str(rng.randint(1780, 1899)),
            "trade": rng.choice(W.OCCUPATIONS),
            "instrument": rng.choice(W.INSTRUMENTS),
            "school": rng.choice(W.INSTITUTIONS),
            "river": rng.choice([g[5] for g in W.GEOGRAPHY]),
            "mountain": rng.choice([g[6] for g in W.GEOGRAPHY]),
            "pastime": rng.choice(W.HOBBIES),
            "friend": cast[(i + 1 + rng.randrange(len(cast) - 1)) % len(cast)],
        }
    return out


def _book(index: int, split: str, cast: tuple[str, ...], passages: int, seed: int, titles: _Titles) -> _Book:
    rng = _rng(seed, "books", index)
    country = rng.choice(W.GEOGRAPHY)
    cities = [country[1], *country[2]]
    values = _values(rng, cast, country)
    facts = [(person, fact) for person in cast for fact in FACTS]
    rng.shuffle(facts)
    texts, qa = [], []
    for p in range(passages):
        stated = facts[p * FACTS_PER_PASSAGE:(p + 1) * FACTS_PER_PASSAGE]
        sentences = [fact.sentence.format(a=person, v=values[person][fact.key]) for person, fact in stated]
        qa += [{"question": fact.question.format(a=person), "answer": values[person][fact.key]}
               for person, fact in stated]
        target = rng.randint(WORDS[0] + 5, WORDS[1] - 15)
        fillers = rng.sample(FILLERS, len(FILLERS))
        people = [person for person, _ in stated]
        while sum(len(s.split(" ")) for s in sentences) < target:
            filler = fillers.pop().format(a=rng.choice(people), c=rng.choice(cities), t=rng.choice(W.THEMES))
            sentences.insert(rng.randrange(len(sentences) + 1), filler)
        texts.append(" ".join(sentences))
    return _Book(titles.new(rng), split, cast, tuple(texts), tuple(qa))


def generate_corpus(
    num_books: NumBooks = 24,
    passages_per_book: PassagesPerBook = 12,
    seed: Annotated[int, Range(ge=0)] = 0,
) -> MuseData:
    """Build the built-in corpus (see the module docstring): a :class:`MuseData` whose ``meta``
    (generator, version, seed, parameters, the books with their split, title and cast) goes
    into the manifest when written with :func:`~soulcli.data.muse.write_muse`."""
    schema.validate(generate_corpus, dict(num_books=num_books, passages_per_book=passages_per_book,
                                          seed=seed), "the built-in corpus")
    quarter = num_books // 4
    splits = ["forget"] * quarter + ["retain1"] * (num_books - 3 * quarter) \
        + ["retain2"] * quarter + ["holdout"] * quarter
    names = [f"{f} {l}" for f in W.FIRST_NAMES for l in W.LAST_NAMES]
    names = _rng(seed, "books", "names").sample(names, CAST * num_books)
    titles = _Titles()
    books = [_book(i, split, tuple(names[i * CAST:(i + 1) * CAST]), passages_per_book, seed, titles)
             for i, split in enumerate(splits)]

    def passages(split: str) -> list[str]:
        return [t for b in books if b.split == split for t in b.passages]

    def questions(split: str) -> list[dict]:
        return [dict(r) for b in books if b.split == split for r in b.qa]

    raw = {split: passages(split) for split in ("forget", "retain1", "retain2", "holdout")}
    verbmem = []
    for text in raw["forget"]:
        words = text.split(" ")
        cut = len(words) // 3
        verbmem.append({"prompt": " ".join(words[:cut]), "gt": " ".join(words[cut:])})
    shots = questions("retain1")
    knowmem = {"forget_qa": questions("forget"), "retain_qa": questions("retain2"),
               "forget_qa_icl": shots[:ICL_SHOTS], "retain_qa_icl": shots[ICL_SHOTS:2 * ICL_SHOTS]}
    meta = {
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "parameters": {"num_books": num_books, "passages_per_book": passages_per_book, "seed": seed},
        "books": [{"title": b.title, "split": b.split, "cast": list(b.cast)} for b in books],
    }
    privleak = {"forget": raw["forget"], "retain": raw["retain2"], "holdout": raw["holdout"]}
    return MuseData(raw=raw, verbmem=verbmem, knowmem=knowmem, privleak=privleak, meta=meta)


__all__ = [
    "CAST", "FACTS", "FACTS_PER_PASSAGE", "FILLERS", "Fact", "GENERATOR_NAME", "GENERATOR_VERSION",
    "ICL_SHOTS", "MAX_BOOKS", "MAX_PASSAGES_PER_BOOK", "NumBooks", "PassagesPerBook", "WORDS",
    "generate_corpus",
]
