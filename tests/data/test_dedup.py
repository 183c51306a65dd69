"""Deduplication: exact keys match trivial variants, MinHash + LSH catch edited copies and keep distinct articles."""

from __future__ import annotations

import pickle
import random
import re
from typing import Any

import numpy as np
import pytest

from lmpre.data import codepoints
from lmpre.data.dedup import (
    Deduplication,
    DuplicateIndex,
    KeySet,
    MinHasher,
    canonical_words,
    exact_key,
    lsh_bands,
)
from lmpre.errors import ConfigError


def edit_words(text: str, edits: int, seed: int = 0) -> str:
    """`text` with `edits` words replaced, spread over it."""
    words = text.split(" ")
    rng = random.Random(seed)
    for i in rng.sample(range(len(words)), edits):
        words[i] = "edited"
    return " ".join(words)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


def test_canonical_words_ignore_case_punctuation_and_whitespace() -> None:
    words = canonical_words("  Hello,\tWORLD!\n\nIt's — “fine”…  ").tolist()
    assert words == canonical_words("hello world its fine").tolist()
    assert len(set(words)) == 4
    assert canonical_words("Straße").tolist() == canonical_words("STRASSE").tolist()  # casefold, not lower


def test_exact_key_matches_trivial_variants_only() -> None:
    text = "The lobster is blue. It turns red when cooked!"
    key = exact_key(text)
    assert len(key) == 16
    for variant in [text, text.upper(), f"  {text}\n", text.replace(" ", "\n\n  "), text.replace(".", " .")]:
        assert exact_key(variant) == key
    assert exact_key(text.replace("blue", "green")) != key
    assert exact_key("ab c") != exact_key("a bc")  # words stay apart


def test_signature_shape_and_empty_text() -> None:
    hasher = MinHasher(num_perm=64)
    signature = hasher.signature("a few words of text")
    assert signature.shape == (64,)
    assert signature.dtype == np.uint32
    assert (hasher.signature("") == 2**32 - 1).all()
    assert (hasher.signature("?! ...") == 2**32 - 1).all()  # punctuation only: no words


def test_signature_is_the_same_in_every_process() -> None:
    """Golden values: workers and the deciding process, runs and machines must agree. A change here makes stored
    signatures incomparable with new ones."""
    signature = MinHasher().signature("The quick brown fox jumps over the lazy dog near the river bank")
    assert signature[:8].tolist() == [
        331250750,
        316161114,
        2748631,
        149167394,
        553900955,
        451542652,
        396279066,
        689600007,
    ]
    assert not np.array_equal(signature, MinHasher(seed=2).signature("The quick brown fox jumps over the lazy dog"))


def test_signature_does_not_depend_on_the_kept_powers(monkeypatch: pytest.MonkeyPatch, articles: list[str]) -> None:
    """Place weights come from a per-process cache or, for texts too long to keep them, are computed afresh."""
    expected = MinHasher().signature(articles[0])
    monkeypatch.setattr(codepoints, "POWERS_KEPT", 1000)
    monkeypatch.setattr(codepoints, "_POWERS", (np.ones(0, np.uint64), np.ones(0, np.uint64)))
    assert np.array_equal(MinHasher().signature(articles[0]), expected)
    assert len(codepoints._POWERS[0]) == 0


def test_signature_ignores_case_punctuation_and_whitespace() -> None:
    hasher = MinHasher()
    text = "The lobster is blue, and it turns red when cooked in a pot of water."
    assert np.array_equal(hasher.signature(text), hasher.signature(text.upper().replace(" ", "  \n")))


def test_signature_estimates_jaccard_similarity(articles: list[str]) -> None:
    hasher = MinHasher(num_perm=256)
    words = re.sub(r"[^\w\s]", "", articles[0].casefold()).split()  # the canonical words, as strings

    def shingles(w: list[str]) -> set[tuple[str, ...]]:
        return {tuple(w[i : i + 5]) for i in range(len(w) - 4)}

    half = len(words) // 2
    for other in [words[:half] + words[half:][::-1], words[: half + half // 2]]:
        a, b = shingles(words), shingles(other)
        true = len(a & b) / len(a | b)
        estimate = similarity(hasher.signature(" ".join(words)), hasher.signature(" ".join(other)))
        assert abs(estimate - true) < 0.1, (estimate, true)


def test_lsh_bands_fit_the_threshold() -> None:
    bands, rows = lsh_bands(0.8, 128)
    assert bands * rows <= 128

    def candidate(s: float) -> float:
        return float(1 - (1 - s**rows) ** bands)

    assert candidate(0.95) > 0.99
    assert candidate(0.5) < 0.01
    assert lsh_bands(0.5, 128)[1] < rows  # a lower threshold: shorter bands, matched more easily


def test_exact_and_near_duplicates_are_dropped(articles: list[str]) -> None:
    hasher = MinHasher()
    index = DuplicateIndex(threshold=0.8)

    def check(text: str) -> str | None:
        return index.check(exact_key(text), hasher.signature(text))

    original = articles[0]
    assert len(original.split()) > 500
    assert check(original) is None
    assert check(original) == "dedup.exact"
    assert check(original.upper().replace(" , ", ", ")) == "dedup.exact"
    edited = edit_words(original, 10)
    assert similarity(hasher.signature(original), hasher.signature(edited)) > 0.8
    assert check(edited) == "dedup.near"
    assert check(edited) == "dedup.near"  # a dropped document is not added: still the original that it matches


def test_distinct_articles_are_all_kept(articles: list[str]) -> None:
    dedup = Deduplication()
    hasher, index = dedup.minhasher(), dedup.index()
    assert hasher is not None
    assert all(index.check(exact_key(text), hasher.signature(text)) is None for text in articles)


def test_first_checked_copy_is_kept(articles: list[str]) -> None:
    """The pipeline checks val and test first: the train copy of a held-out document is the one dropped."""
    hasher, index = MinHasher(), DuplicateIndex()
    held_out, train = articles[1], edit_words(articles[1], 3)
    assert index.check(exact_key(held_out), hasher.signature(held_out)) is None
    assert index.check(exact_key(train), hasher.signature(train)) == "dedup.near"


def test_exact_only_and_near_only(articles: list[str]) -> None:
    text, edited = articles[2], edit_words(articles[2], 5)
    exact_only = Deduplication(near=False)
    assert exact_only.minhasher() is None
    index = exact_only.index()
    assert index.check(exact_key(text), None) is None
    assert index.check(exact_key(edited), None) is None
    assert index.check(exact_key(text), None) == "dedup.exact"
    near_only = Deduplication(exact=False).index()
    hasher = MinHasher()
    assert near_only.check(exact_key(text), hasher.signature(text)) is None
    assert near_only.check(exact_key(text), hasher.signature(text)) == "dedup.near"
    with pytest.raises(ValueError, match="signature"):
        near_only.check(exact_key(text), None)


@pytest.mark.parametrize(("field", "value"), [("threshold", 1.0), ("threshold", 0), ("num_perm", 0), ("ngram", 0)])
def test_settings_are_checked(field: str, value: float) -> None:
    settings: dict[str, Any] = {field: value}
    with pytest.raises(ConfigError, match=f"data.dedup.{field}"):
        Deduplication(**settings)


def test_key_set_grows_and_stays_half_empty() -> None:
    keys = KeySet()
    rng = random.Random(0)
    added = [rng.getrandbits(64) for _ in range(5000)] + [0]
    for key in added:
        keys.add(key)
    keys.add(added[0])
    assert len(keys) == len(added)
    assert all(key in keys for key in added)
    assert not any(rng.getrandbits(64) in keys for _ in range(1000))
    assert 16 * len(keys) <= 8 * len(keys._slots) <= 32 * len(keys)  # 16 to 32 bytes a key


def test_hasher_and_settings_pickle_small() -> None:
    hasher = MinHasher()
    copy = pickle.loads(pickle.dumps(hasher))
    assert len(pickle.dumps(hasher)) < 4000
    assert np.array_equal(copy.signature("some text to hash here"), hasher.signature("some text to hash here"))
    assert pickle.loads(pickle.dumps(Deduplication(threshold=0.7))) == Deduplication(threshold=0.7)
