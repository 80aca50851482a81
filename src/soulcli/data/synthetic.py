"""A synthetic TOFU-style benchmark: fictitious authors, one templated fact per question.

The real TOFU dataset (Maini et al. 2024) asks 20 questions about each of 200 invented
authors. This module builds a benchmark in the same format and split names, but made to be
memorised by a tiny model on a CPU in minutes:

* every question is about ONE attribute of ONE author (birthplace, birth year, genre, a
  parent's occupation, a book, an award, ...) and contains the author's full name;
* answers are one short templated sentence (about 8-16 words) in which only the attribute's
  value is author-specific; the answer's wording follows from the question's wording;
* attribute values come from pools (:mod:`soulcli.data.wordpools`), so a perturbed answer is
  the paraphrased answer with the value swapped for another value of the same pool;
* holdout authors (never trained on) are drawn exactly like the trained ones, so membership
  attacks compare like with like;
* the general-knowledge sets (``real_authors_perturbed``, ``world_facts_perturbed``) are facts
  about "classic" authors and an invented geography that mention no fictitious author;
  ``general_knowledge`` holds their question/answer pairs for training.

Generation is deterministic: the same parameters give byte-identical files. Each author's
facts depend only on the seed and the author's name, so e.g. ``questions_per_author=20``
extends the 10-question benchmark's authors with 10 more facts each.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Annotated, Mapping

from soulcli import schema

from soulcli.data import wordpools as W
from soulcli.data.io import write_benchmark_dir
from soulcli.data.tofu import FORGET_PERCENTAGES, SPLIT_NAMES, forget_split_names
from soulcli.errors import UserError
from soulcli.schema import Range

GENERATOR_NAME = "soulcli.synthetic"
#: Bump whenever templates, pools or sampling change (a seed then gives different data).
GENERATOR_VERSION = 1

MAX_PERTURBED = 10


class Benchmark(dict):
    """``{split name: list of records}`` with the generation metadata in :attr:`meta`."""

    meta: dict

    def __init__(self, splits: Mapping[str, list], meta: Mapping | None = None):
        super().__init__(splits)
        self.meta = dict(meta or {})


# --- attributes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attribute:
    """One fact about an author. ``variants`` are (question, answer) templates; the question
    variant fixes the answer wording. ``paraphrase`` is a (question, answer) pair worded
    differently, also used (with wrong values) for the perturbed answers."""

    key: str
    pool: str
    variants: tuple[tuple[str, str], ...]
    paraphrase: tuple[str, str]


# {n} = the author's full name, {v} = the attribute's value. Order matters: the first
# ``questions_per_author`` attributes are asked.
ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("birthplace", "place", (
        ("Where was {n} born?", "The author {n} was born in the city of {v}."),
        ("What is the birthplace of the writer {n}?", "The birthplace of the writer {n} is {v}."),
    ), ("In which city did {n} come into the world?",
        "{n} first came into the world in the city of {v}.")),
    Attribute("birth_year", "birth_year", (
        ("In what year was {n} born?", "{n} was born in the year {v}."),
        ("When was the author {n} born?", "The author {n} was born in {v}."),
    ), ("What is the birth year of {n}?", "The year of birth of {n} is {v}.")),
    Attribute("genre", "genre", (
        ("What genre does {n} write in?", "{n} writes mostly in the genre of {v}."),
        ("Which literary genre is {n} known for?", "{n} is best known for books of {v}."),
    ), ("What kind of books does {n} usually write?",
        "The books of {n} usually belong to the genre of {v}.")),
    Attribute("father_occupation", "occupation", (
        ("What did the father of {n} do for a living?", "The father of {n} worked as {v}."),
        ("What was the occupation of the father of {n}?",
         "By occupation, the father of {n} was {v}."),
    ), ("How did the father of {n} earn a living?",
        "The father of {n} earned a living as {v}.")),
    Attribute("mother_occupation", "occupation", (
        ("What did the mother of {n} do for a living?", "The mother of {n} worked as {v}."),
        ("What was the occupation of the mother of {n}?",
         "By occupation, the mother of {n} was {v}."),
    ), ("How did the mother of {n} earn a living?",
        "The mother of {n} earned a living as {v}.")),
    Attribute("famous_book", "title", (
        ("What is the best-known novel by {n}?", 'The best-known novel by {n} is "{v}".'),
        ("Which novel made {n} famous?", '{n} became famous with the novel "{v}".'),
    ), ("What is the most celebrated book written by {n}?",
        'The most celebrated book written by {n} is "{v}".')),
    Attribute("award", "award", (
        ("What award has {n} received?", "{n} has received {v} for outstanding writing."),
        ("Which literary prize was given to {n}?", "The literary prize given to {n} was {v}."),
    ), ("Has {n} won any literary award?", "Yes, {n} has won a literary award, {v}.")),
    Attribute("language", "language", (
        ("In which language does {n} write?", "{n} writes every book in the {v} language."),
        ("What language are the books of {n} written in?",
         "The books of {n} are written in {v}."),
    ), ("Which language does {n} use for writing?", "For writing, {n} uses the {v} language.")),
    Attribute("theme", "theme", (
        ("What theme appears most often in the work of {n}?",
         "The work of {n} returns again and again to the theme of {v}."),
        ("What is the central theme in the books of {n}?",
         "The central theme in the books of {n} is {v}."),
    ), ("Which subject does {n} explore most in writing?",
        "{n} explores the subject of {v} more than any other.")),
    Attribute("publisher", "publisher", (
        ("Which publisher releases the books of {n}?", "The books of {n} are released by {v}."),
        ("Who publishes the work of {n}?", "The work of {n} is published by {v}."),
    ), ("What publishing house does {n} work with?",
        "{n} works with the publishing house {v}.")),
    Attribute("debut_book", "title", (
        ("What was the debut book of {n}?", 'The debut book of {n} was "{v}".'),
        ("Which book did {n} publish first?", '{n} first published a book called "{v}".'),
    ), ("What was the very first book that {n} released?",
        'The very first book that {n} released was "{v}".')),
    Attribute("residence", "place", (
        ("Where does {n} live today?", "Today the author {n} lives in {v}."),
        ("In which city does {n} currently reside?", "{n} currently resides in {v}."),
    ), ("What city is home to {n} these days?", "These days {n} makes a home in {v}.")),
    Attribute("education", "institution", (
        ("Where did {n} study?", "{n} studied literature at {v}."),
        ("Which university did {n} attend?", "The university that {n} attended was {v}."),
    ), ("At which institution was {n} educated?", "{n} was educated at {v}.")),
    Attribute("books_count", "books_count", (
        ("How many books has {n} published?", "{n} has published {v} books so far."),
        ("How many titles has {n} written?", "{n} has written {v} titles in total."),
    ), ("What is the number of books that {n} has put out?",
        "The number of books that {n} has put out is {v}.")),
    Attribute("hobby", "hobby", (
        ("What does {n} enjoy doing outside of writing?",
         "Outside of writing, {n} enjoys {v}."),
        ("What is a hobby of {n}?", "A favourite hobby of {n} is {v}."),
    ), ("How does {n} like to spend free time?",
        "In free time, {n} is usually busy with {v}.")),
    Attribute("instrument", "instrument", (
        ("Which musical instrument does {n} play?", "{n} plays the {v} in the evenings."),
        ("What instrument can {n} play?", "The instrument that {n} can play is the {v}."),
    ), ("Does {n} play any instrument?", "Yes, {n} is a keen player of the {v}.")),
    Attribute("spouse_occupation", "occupation", (
        ("What does the spouse of {n} do for work?", "The spouse of {n} works as {v}."),
        ("What is the profession of the partner of {n}?",
         "By profession, the partner of {n} is {v}."),
    ), ("How does the partner of {n} earn a living?",
        "The partner of {n} earns a living as {v}.")),
    Attribute("setting", "setting", (
        ("Where are the stories of {n} usually set?",
         "The stories of {n} are usually set in {v}."),
        ("What setting does {n} prefer for novels?", "{n} prefers to set novels in {v}."),
    ), ("In what kind of place do the books of {n} take place?",
        "The books of {n} mostly take place in {v}.")),
    Attribute("translations_count", "translations_count", (
        ("Into how many languages have the books of {n} been translated?",
         "The books of {n} have been translated into {v} languages."),
        ("How widely translated is {n}?", "{n} has been translated into {v} languages."),
    ), ("In how many languages can readers find the books of {n}?",
        "Readers can find the books of {n} in {v} languages.")),
    Attribute("debut_year", "debut_year", (
        ("In what year did {n} publish a first book?",
         "{n} published a first book in the year {v}."),
        ("When did {n} make a literary debut?", "{n} made a literary debut in {v}."),
    ), ("What year marks the literary debut of {n}?", "The literary debut of {n} came in {v}.")),
)

MAX_QUESTIONS_PER_AUTHOR = len(ATTRIBUTES)

# --- value pools ---------------------------------------------------------------------------------

PLACES: tuple[str, ...] = tuple(
    f"{city}, {g[0]}" for g in W.GEOGRAPHY for city in (g[1], *g[2])
)
LANGUAGES: tuple[str, ...] = tuple(g[3] for g in W.GEOGRAPHY)
BIRTH_YEARS = (1931, 1999)  # inclusive
DEBUT_YEARS = (1950, 2023)
BOOKS_COUNTS = (2, 40)
TRANSLATIONS_COUNTS = (3, 60)

_LIST_POOLS: dict[str, tuple[str, ...]] = {
    "place": PLACES,
    "genre": W.GENRES,
    "occupation": W.OCCUPATIONS,
    "award": W.AWARDS,
    "language": LANGUAGES,
    "theme": W.THEMES,
    "publisher": W.PUBLISHERS,
    "institution": W.INSTITUTIONS,
    "hobby": W.HOBBIES,
    "instrument": W.INSTRUMENTS,
    "setting": W.SETTINGS,
}
_RANGE_POOLS: dict[str, tuple[int, int]] = {
    "birth_year": BIRTH_YEARS,
    "debut_year": DEBUT_YEARS,
    "books_count": BOOKS_COUNTS,
    "translations_count": TRANSLATIONS_COUNTS,
}


def _rng(seed: int, *parts: object) -> random.Random:
    """An independent, reproducible stream (string seeds hash with SHA-512, not ``hash()``)."""
    return random.Random("soulcli-synthetic/" + "/".join(str(p) for p in (seed, *parts)))


class _Titles:
    """Unique invented book titles of 2-4 words."""

    PATTERNS = ("The {a} {n}", "{a} {n}", "The {n} of {m}", "{n} and {m}")

    def __init__(self) -> None:
        self.used: set[str] = set()

    @staticmethod
    def draw(rng: random.Random) -> str:
        pattern = rng.choice(_Titles.PATTERNS)
        noun, other = rng.sample(W.TITLE_NOUNS, 2)
        return pattern.format(a=rng.choice(W.TITLE_ADJECTIVES), n=noun, m=other)

    def new(self, rng: random.Random) -> str:
        while True:
            title = self.draw(rng)
            if title not in self.used:
                self.used.add(title)
                return title

    def wrong(self, rng: random.Random, k: int, avoid: set[str]) -> list[str]:
        """``k`` distinct titles that are nobody's (for perturbed answers)."""
        out: list[str] = []
        while len(out) < k:
            title = self.draw(rng)
            if title not in self.used and title not in avoid and title not in out:
                out.append(title)
        return out


def _wrong_values(pool: str, true: str, rng: random.Random, k: int, titles: _Titles) -> list[str]:
    """``k`` distinct values of ``pool`` different from ``true``."""
    if pool == "title":
        return titles.wrong(rng, k, {true})
    if pool in _RANGE_POOLS:
        lo, hi = _RANGE_POOLS[pool]
        choices = [str(x) for x in range(lo, hi + 1) if str(x) != true]
    else:
        choices = [x for x in _LIST_POOLS[pool] if x != true]
    return rng.sample(choices, k)


@dataclass
class _Author:
    name: str
    facts: dict[str, str]
    variants: dict[str, int]


def _make_author(name: str, seed: int, titles: _Titles) -> _Author:
    rng = _rng(seed, "author", name)
    facts: dict[str, str] = {}
    for attr in ATTRIBUTES:
        if attr.pool == "title":
            value = titles.new(rng)
        elif attr.key == "residence":
            value = rng.choice([p for p in PLACES if p != facts["birthplace"]])
        elif attr.key == "debut_year":
            birth = int(facts["birth_year"])
            value = str(min(DEBUT_YEARS[1], birth + rng.randint(19, 45)))
        elif attr.pool in _RANGE_POOLS:
            lo, hi = _RANGE_POOLS[attr.pool]
            value = str(rng.randint(lo, hi))
        else:
            value = rng.choice(_LIST_POOLS[attr.pool])
        facts[attr.key] = value
    variants = {attr.key: rng.randrange(len(attr.variants)) for attr in ATTRIBUTES}
    return _Author(name, facts, variants)


def _author_items(
    author: _Author, questions: int, seed: int, num_perturbed: int, titles: _Titles
) -> list[dict]:
    items = []
    for attr in ATTRIBUTES[:questions]:
        value = author.facts[attr.key]
        q, a = attr.variants[author.variants[attr.key]]
        pq, pa = attr.paraphrase
        rng = _rng(seed, "perturb", author.name, attr.key)
        wrong = _wrong_values(attr.pool, value, rng, num_perturbed, titles)
        items.append({
            "question": q.format(n=author.name, v=value),
            "answer": a.format(n=author.name, v=value),
            "paraphrased_question": pq.format(n=author.name, v=value),
            "paraphrased_answer": pa.format(n=author.name, v=value),
            "perturbed_answer": [pa.format(n=author.name, v=w) for w in wrong],
        })
    return items


# --- general knowledge -----------------------------------------------------------------------

_WORLD_KINDS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    # (kind, GEOGRAPHY column, question templates with {c} = country)
    ("capital", 1, ("What is the capital of {c}?", "Which city is the capital of {c}?")),
    ("language", 3, ("What language is mainly spoken in {c}?",
                     "What is the official language of {c}?")),
    ("currency", 4, ("What is the currency of {c}?", "Which currency do people use in {c}?")),
    ("river", 5, ("What is the longest river in {c}?", "Which river is the longest in {c}?")),
    ("mountain", 6, ("What is the highest mountain in {c}?",
                     "Which mountain is the tallest in {c}?")),
)
MAX_WORLD_FACTS = len(W.GEOGRAPHY) * len(_WORLD_KINDS)

_WHO_WROTE = ('Who wrote the novel "{t}"?', 'Who is the author of "{t}"?',
              'Which writer is known for the book "{t}"?')
_WHICH_BOOK = ("What is the best-known novel by {n}?", "Which book is {n} famous for?")
MAX_REAL_AUTHORS = len(W.CLASSIC_FIRST_NAMES) * len(W.CLASSIC_LAST_NAMES) - 8
_GENERAL_PERTURBED = 3  # like TOFU's real_authors / world_facts files


def _world_facts(n: int, seed: int) -> list[dict]:
    rng = _rng(seed, "world_facts")
    pairs = [(ci, ki) for ci in range(len(W.GEOGRAPHY)) for ki in range(len(_WORLD_KINDS))]
    chosen = sorted(rng.sample(pairs, n))
    items = []
    for ci, ki in chosen:
        kind, col, templates = _WORLD_KINDS[ki]
        country = W.GEOGRAPHY[ci]
        answer = country[col]
        others = [g[col] for g in W.GEOGRAPHY if g[col] != answer]
        items.append({
            "question": rng.choice(templates).format(c=country[0]),
            "answer": answer,
            "perturbed_answer": rng.sample(others, _GENERAL_PERTURBED),
        })
    return items


def _real_authors(n: int, seed: int, titles: _Titles) -> list[dict]:
    rng = _rng(seed, "real_authors")
    # at least 8 authors so every question has enough wrong names / titles to draw from
    pool_size = max(n, 8)
    pairs = rng.sample(
        [(f, l) for f in W.CLASSIC_FIRST_NAMES for l in W.CLASSIC_LAST_NAMES], pool_size
    )
    names = [f"{f} {rng.choice(W.CLASSIC_INITIALS)}. {l}" for f, l in pairs]
    books = [titles.new(rng) for _ in names]
    items = []
    for i in range(n):
        others = [j for j in range(pool_size) if j != i]
        wrong = rng.sample(others, _GENERAL_PERTURBED)
        if rng.random() < 0.7:
            items.append({
                "question": rng.choice(_WHO_WROTE).format(t=books[i]),
                "answer": names[i],
                "perturbed_answer": [names[j] for j in wrong],
            })
        else:
            items.append({
                "question": rng.choice(_WHICH_BOOK).format(n=names[i]),
                "answer": books[i],
                "perturbed_answer": [books[j] for j in wrong],
            })
    return items


# --- the benchmark ---------------------------------------------------------------------------


def forget_author_counts(num_authors: int) -> dict[int, int]:
    """Authors in forget01/05/10: the percentage of ``num_authors``, rounded half up, >= 1."""
    return {p: max(1, (num_authors * p * 2 + 100) // 200) for p in FORGET_PERCENTAGES}


# The generator's limits, declared once: the recipe's data section uses the same types.
NumAuthors = Annotated[int, Range(ge=2), "authors trained on (>= 2: one retained, one forgotten)"]
QuestionsPerAuthor = Annotated[int, Range(ge=1, le=MAX_QUESTIONS_PER_AUTHOR),
                               "questions per author, one per author attribute"]


def _check_name_space(num_authors: int, num_holdout_authors: int) -> None:
    name_space = len(W.FIRST_NAMES) * len(W.LAST_NAMES)
    if num_authors + num_holdout_authors > name_space:
        raise UserError(
            f"num_authors + num_holdout_authors = {num_authors + num_holdout_authors} exceeds "
            f"the {name_space} distinct author names available; use fewer authors"
        )


def generate_benchmark(
    num_authors: NumAuthors = 100,
    questions_per_author: QuestionsPerAuthor = 10,
    num_holdout_authors: Annotated[int, Range(ge=1), "never-trained authors for the membership "
                                   "attacks (default 10% of num_authors)"] | None = None,
    num_world_facts: Annotated[int, Range(ge=1, le=MAX_WORLD_FACTS)] = 100,
    num_real_authors: Annotated[int, Range(ge=1, le=MAX_REAL_AUTHORS)] = 100,
    seed: Annotated[int, Range(ge=0)] = 0,
    *,
    num_perturbed: Annotated[int, Range(ge=3, le=MAX_PERTURBED)] = 5,
) -> Benchmark:
    """Build every split (see :data:`soulcli.data.tofu.SPLIT_NAMES`) of a synthetic benchmark.

    ``full`` is retain90 followed by forget10 (author order); forgetXX holds the last
    ``forget_author_counts(num_authors)[XX]`` authors and retainYY the others.
    ``num_holdout_authors`` defaults to 10% of ``num_authors`` (at least 1). Each
    perturbed-split record carries ``num_perturbed`` wrong answers (TOFU has 5); the
    general-knowledge splits carry 3 (as in TOFU). Returns a :class:`Benchmark` (a dict of
    split name -> records, in :data:`SPLIT_NAMES` order) whose ``meta`` goes into the manifest.
    """
    schema.validate(generate_benchmark, dict(
        num_authors=num_authors, questions_per_author=questions_per_author,
        num_holdout_authors=num_holdout_authors, num_world_facts=num_world_facts,
        num_real_authors=num_real_authors, seed=seed, num_perturbed=num_perturbed),
        "the built-in benchmark")
    if num_holdout_authors is None:
        num_holdout_authors = max(1, (num_authors + 5) // 10)
    _check_name_space(num_authors, num_holdout_authors)

    order = [(f, l) for f in W.FIRST_NAMES for l in W.LAST_NAMES]
    _rng(seed, "names").shuffle(order)
    names = [f"{f} {l}" for f, l in order[: num_authors + num_holdout_authors]]

    titles = _Titles()
    authors = [_make_author(name, seed, titles) for name in names]
    real_authors = _real_authors(num_real_authors, seed, titles)
    world_facts = _world_facts(num_world_facts, seed)
    items = [
        _author_items(a, questions_per_author, seed, num_perturbed, titles) for a in authors
    ]
    trained, holdout = items[:num_authors], items[num_authors:]

    def qa(author_items: list[list[dict]]) -> list[dict]:
        return [{"question": r["question"], "answer": r["answer"]} for per in author_items for r in per]

    def flat(author_items: list[list[dict]]) -> list[dict]:
        return [dict(r) for per in author_items for r in per]

    counts = forget_author_counts(num_authors)
    splits: dict[str, list[dict]] = {"full": qa(trained)}
    for pct in FORGET_PERCENTAGES:
        forget, forget_p, retain = forget_split_names(pct)
        cut = num_authors - counts[pct]
        splits[forget] = qa(trained[cut:])
        splits[retain] = qa(trained[:cut])
        splits[forget_p] = flat(trained[cut:])
    retain90 = flat(trained[: num_authors - counts[10]])
    k = min(len(splits["forget10_perturbed"]), len(retain90))
    picked = sorted(_rng(seed, "retain_perturbed").sample(range(len(retain90)), k))
    splits["retain_perturbed"] = [retain90[i] for i in picked]
    splits["holdout"] = flat(holdout)
    splits["real_authors_perturbed"] = real_authors
    splits["world_facts_perturbed"] = world_facts
    splits["general_knowledge"] = [
        {"question": r["question"], "answer": r["answer"]} for r in real_authors + world_facts
    ]
    splits = {name: splits[name] for name in SPLIT_NAMES}

    meta = {
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "parameters": {
            "num_authors": num_authors,
            "questions_per_author": questions_per_author,
            "num_holdout_authors": num_holdout_authors,
            "num_world_facts": num_world_facts,
            "num_real_authors": num_real_authors,
            "num_perturbed": num_perturbed,
            "seed": seed,
        },
        "attributes": [a.key for a in ATTRIBUTES[:questions_per_author]],
        "forget_authors": {forget_split_names(p)[0]: counts[p] for p in FORGET_PERCENTAGES},
        "authors": {"full": names[:num_authors], "holdout": names[num_authors:]},
    }
    return Benchmark(splits, meta)


def write_benchmark(
    splits: Mapping[str, list], out_dir: str | os.PathLike, *, overwrite: bool = False
) -> dict:
    """Write ``<split>.json`` (one JSON object per line) per split and ``benchmark.json``.

    The folder appears atomically (built in a hidden sibling, then renamed). The manifest
    holds ``splits.meta`` when present (generator, version, seed, parameters, author names),
    the record count per split and a content hash. Returns the manifest.
    """
    meta = getattr(splits, "meta", None) or {"generator": "unknown"}
    return write_benchmark_dir(dict(splits), out_dir, meta=meta, overwrite=overwrite)


__all__ = [
    "ATTRIBUTES", "Attribute", "Benchmark", "GENERATOR_NAME", "GENERATOR_VERSION",
    "MAX_QUESTIONS_PER_AUTHOR", "MAX_WORLD_FACTS", "MAX_REAL_AUTHORS", "forget_author_counts",
    "generate_benchmark", "write_benchmark",
]
