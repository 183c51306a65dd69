"""Exact and near-duplicate detection, split for a parallel pipeline: worker processes compute each document's keys
(`exact_key`, `MinHasher.signature`), then ONE process walks the documents in a fixed order and asks a
`DuplicateIndex` about each, which remembers the ones it keeps.

The order decides which copy survives: the first one checked. The pipeline checks the val and test documents of
every source first, then train, so a train document that repeats a held-out one is dropped from train, and
validation never measures memorisation.
"""

from __future__ import annotations

import functools
import hashlib
from array import array
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from lmpre.data.codepoints import SPACE, WORD_CHAR, codepoints, runs, span_hashes, word_classes
from lmpre.errors import ConfigError

MAX_UINT64 = np.iinfo(np.uint64).max
CHUNK = 1024  # shingles hashed at once: (num_perm, CHUNK) 64-bit values, 1 MiB at 128 permutations


@functools.lru_cache(maxsize=1)
def canonical_words(text: str) -> NDArray[np.uint64]:
    """A 64-bit hash of each word of `text` casefolded, with punctuation removed ("It's" is "its"): what copies that
    differ only in case, punctuation or whitespace share. The last text's are kept: the exact key and the MinHash
    signature of a document read them from one computation (callers must not change the array)."""
    points = codepoints(text.casefold())
    classes = word_classes()[points]
    kept = classes & (WORD_CHAR | SPACE) != 0  # punctuation and symbols out
    return span_hashes(points[kept], *runs(classes[kept] & SPACE == 0))


def exact_key(text: str) -> bytes:
    """16 bytes shared by copies of `text` that differ only in case, punctuation or whitespace: a hash of the
    sequence of its canonical words."""
    return hashlib.blake2b(canonical_words(text).tobytes(), digest_size=16).digest()


class MinHasher:
    """MinHash signatures over the word n-grams (shingles) of the canonical text: the share of positions where two
    signatures agree estimates the Jaccard similarity of the two documents' shingle sets.

    Each shingle is hashed once to 64 bits; permutation i maps a hash h to `(a[i] * h) mod 2**64 >> 32` with a
    random odd a[i] (multiply-shift, a universal family: Dietzfelbinger et al. 1997), all permutations of a chunk of
    shingles in one array operation. Its Jaccard estimates are as close as with an added `+ b[i]`, which cost a
    third more time.
    The same seed gives the same signatures in every process, on every machine, with every numpy version.
    """

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1):
        self.num_perm = num_perm
        self.ngram = ngram
        self.seed = seed
        # Raw PCG64 output: unlike Generator methods, numpy guarantees it for a seed across versions.
        raw = np.random.PCG64(seed).random_raw(num_perm + ngram) | np.uint64(1)  # odd: multiplying by it loses no bit
        self._a, self._weights = raw[:num_perm, None], raw[num_perm:]

    def prepare(self) -> None:
        """As `Filter.prepare`: the character table, built once before the workers fork."""
        word_classes()

    def shingles(self, text: str) -> NDArray[np.uint64]:
        """A 64-bit key for each word n-gram of the canonical text; a text of fewer words is one
        shingle, an empty one has none. Keys only need to differ between different shingles, not to look random:
        the permutations are universal for any distinct keys."""
        words = canonical_words(text)
        if len(words) == 0:
            return np.zeros(0, np.uint64)
        # A shingle weighs each of its n words by a random odd constant of its place.
        n = min(self.ngram, len(words))
        shingles = np.zeros(len(words) - n + 1, np.uint64)
        for k in range(n):
            shingles += words[k : len(shingles) + k] * self._weights[k]
        return shingles

    def signature(self, text: str) -> NDArray[np.uint32]:
        """`num_perm` minima, one per permutation, of the shingle keys of `text` (all 2**32 - 1 when empty)."""
        shingles = self.shingles(text)
        minima = np.full(self.num_perm, MAX_UINT64, np.uint64)
        values = np.empty((self.num_perm, min(CHUNK, len(shingles))), np.uint64)
        for start in range(0, len(shingles), CHUNK):
            chunk = shingles[start : start + CHUNK]
            out = values[:, : len(chunk)]
            np.multiply(self._a, chunk, out=out)
            np.minimum(minima, out.min(axis=1), out=minima)
        return (minima >> np.uint64(32)).astype(np.uint32)


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) of LSH banding for `threshold`: two documents are candidates when all `rows` entries of some
    band agree, which happens with probability 1 - (1 - s**rows)**bands at Jaccard similarity s. Chosen to
    minimise the expected share of pairs judged wrongly (false matches below the threshold plus misses above it)
    for similarities spread evenly over [0, 1], as datasketch does."""
    similarity = np.linspace(0, 1, 2001)
    below = similarity < threshold
    best: tuple[float, int, int] | None = None
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            candidate = 1 - (1 - similarity**rows) ** bands
            error = float(np.where(below, candidate, 1 - candidate).mean())
            if best is None or error < best[0]:
                best = (error, bands, rows)
    assert best is not None
    return best[1], best[2]


class KeySet:
    """A set of 64-bit keys in one flat array (open addressing, linear probing, at most half full): 16-32 bytes a
    key, where a Python set of ints takes about 80. Holds exact keys and LSH band keys of millions of documents."""

    def __init__(self, capacity: int = 1024):
        self._slots = array("Q", [0]) * capacity  # capacity: a power of two; 0 marks an empty slot
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, key: int) -> bool:
        return self._slots[self._slot(key or 1)] != 0

    def add(self, key: int) -> None:
        key = key or 1
        slot = self._slot(key)
        if self._slots[slot] == 0:
            self._slots[slot] = key
            self._size += 1
            if 2 * self._size > len(self._slots):
                self._grow()

    def _slot(self, key: int) -> int:
        """The slot that holds `key`, or the empty one where it would go."""
        mask = len(self._slots) - 1
        slot = key & mask
        while self._slots[slot] not in (0, key):
            slot = (slot + 1) & mask
        return slot

    def _grow(self) -> None:
        keys = [key for key in self._slots if key]
        self._slots = array("Q", [0]) * (2 * len(self._slots))
        for key in keys:
            self._slots[self._slot(key)] = key


class DuplicateIndex:
    """Which documents, among those checked so far, were kept: it answers whether the next one duplicates one of
    them, and keeps it if not. It stores 8 bytes of each kept document's exact key and one 8-byte key per LSH
    band (16 to 32 bytes each with the free slots), never texts or signatures; runs in one process, in the order
    the module docstring describes."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, exact: bool = True, near: bool = True):
        self.threshold = threshold
        self.num_perm = num_perm
        self.exact = exact
        self.near = near
        self.bands, self.rows = lsh_bands(threshold, num_perm) if near else (0, 0)
        self._exact_keys = KeySet()
        self._band_keys = KeySet()

    def check(self, exact: bytes | None, signature: NDArray[np.uint32] | None) -> str | None:
        """`dedup.exact` or `dedup.near` when the document duplicates a kept one; otherwise None, and it is kept."""
        exact_int = int.from_bytes(exact[:8], "little") if self.exact and exact is not None else None
        if exact_int is not None and exact_int in self._exact_keys:
            return "dedup.exact"
        band_keys = self._band_keys_of(signature) if self.near else []
        if any(key in self._band_keys for key in band_keys):
            return "dedup.near"
        if exact_int is not None:
            self._exact_keys.add(exact_int)
        for key in band_keys:
            self._band_keys.add(key)
        return None

    def _band_keys_of(self, signature: NDArray[np.uint32] | None) -> list[int]:
        if signature is None or len(signature) != self.num_perm:
            raise ValueError(f"a near-duplicate check needs a signature of {self.num_perm} values, got {signature!r}")
        rows = np.ascontiguousarray(signature, np.uint32)[: self.bands * self.rows].reshape(self.bands, self.rows)
        return [
            int.from_bytes(hashlib.blake2b(band.tobytes(), digest_size=8, salt=i.to_bytes(8, "little")).digest())
            for i, band in enumerate(rows)
        ]


@dataclass(frozen=True)
class Deduplication:
    """The settings of `data.dedup` (conf/filter/dedup.yaml): which duplicates to remove and how near is near.

    Builds the two halves the pipeline runs apart: `minhasher()` for the worker processes, `index()` for the one
    process that decides."""

    exact: bool = True  # drop documents equal to a kept one up to case, punctuation and whitespace
    near: bool = True  # drop documents whose estimated Jaccard similarity to a kept one is above `threshold`
    threshold: float = 0.8  # Jaccard similarity of word n-gram sets
    num_perm: int = 128  # MinHash permutations: more estimate similarity better, cost time and memory
    ngram: int = 5  # words per shingle
    seed: int = 1  # picks the permutations; signatures from different seeds cannot be compared

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ConfigError(f"data.dedup.threshold={self.threshold} must be a Jaccard similarity in (0, 1).")
        if self.num_perm < 1:
            raise ConfigError(f"data.dedup.num_perm={self.num_perm} must be at least 1.")
        if self.ngram < 1:
            raise ConfigError(f"data.dedup.ngram={self.ngram} must be at least 1.")

    def minhasher(self) -> MinHasher | None:
        return MinHasher(self.num_perm, self.ngram, self.seed) if self.near else None

    def index(self) -> DuplicateIndex:
        return DuplicateIndex(self.threshold, self.num_perm, exact=self.exact, near=self.near)
