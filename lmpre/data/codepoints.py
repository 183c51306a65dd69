"""A text as a numpy array of code points, for the cleaning steps that read every character: a table lookup, a
prefix sum or a sort over a whole document runs in C, where a Python loop over its words or a regex scan that
finds nothing costs 5-10x more. Shared by the filters and deduplication."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

# The odd constant of the string hash; fixed, so that hashes agree across processes, machines and runs.
CHAR_BASE = 0x100000001B3
CHAR_BASE_INVERSE = pow(CHAR_BASE, -1, 2**64)
_POWERS: tuple[NDArray[np.uint64], NDArray[np.uint64]] = (np.ones(0, np.uint64), np.ones(0, np.uint64))
POWERS_KEPT = 1 << 22  # code points: 64 MiB


def codepoints(text: str) -> NDArray[np.uint32]:
    """One uint32 per character of `text` (index i is text[i]), lone surrogates included."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)


def char_table(bits: Mapping[int, str]) -> NDArray[np.uint8]:
    """For every code point, the OR of the `bits` whose regex (one character, e.g. a class) matches it. Built from
    Python's own character classes, so a lookup agrees with the regex; about 0.03 s per pattern."""
    # Every code point as one string: decoded from a numpy range, 10x faster than joining chr()s.
    chars = np.arange(sys.maxunicode + 1, dtype=np.uint32).tobytes().decode("utf-32-le", "surrogatepass")
    table = np.zeros(len(chars), np.uint8)
    for bit, pattern in bits.items():
        table[[match.start() for match in re.finditer(pattern, chars)]] |= bit
    return table


WORD_CHAR, LETTER, SPACE = 1, 2, 4


@functools.cache
def word_classes() -> NDArray[np.uint8]:
    """Python's own \\w, letters (`[^\\W\\d_]`) and \\s (where str.split() splits too) per code point, once per
    process: words for the Gopher rules, canonical words for deduplication. Neither \\w nor \\s is punctuation."""
    return char_table({WORD_CHAR: r"\w", LETTER: r"[^\W\d_]", SPACE: r"\s"})


def char_powers(n: int) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """B**(j + 1) and B**-(j + 1) mod 2**64 for j < n, the place weights of the string hash. Kept per process and
    grown to the longest text seen, up to POWERS_KEPT code points: computing them for each text took 15% of the time
    of a document's hashing."""
    global _POWERS
    if len(_POWERS[0]) < n:
        size = max(n, 2 * len(_POWERS[0]), 1 << 16)
        powers = (
            np.cumprod(np.full(size, CHAR_BASE, np.uint64), dtype=np.uint64),
            np.cumprod(np.full(size, CHAR_BASE_INVERSE, np.uint64), dtype=np.uint64),
        )
        if size > POWERS_KEPT:  # a rare huge text: not worth holding its 16 bytes per code point
            return powers[0][:n], powers[1][:n]
        _POWERS = powers
    return _POWERS[0][:n], _POWERS[1][:n]


def span_hashes(points: NDArray[np.uint32], starts: NDArray[np.int64], ends: NDArray[np.int64]) -> NDArray[np.uint64]:
    """A 64-bit polynomial hash of each span points[start:end], read off one prefix sum of the whole array: equal
    spans get equal hashes wherever they are (span = sum(c[j] * B**(j - start)) mod 2**64)."""
    powers, inverse_powers = char_powers(len(points))
    prefix = np.zeros(len(points) + 1, np.uint64)
    np.cumsum(points * powers, out=prefix[1:])
    return (prefix[ends] - prefix[starts]) * inverse_powers[starts]


def runs(inside: NDArray[np.bool_]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The starts and ends of the runs of True in `inside` (e.g. the words between whitespace)."""
    # Edges are where `inside` flips; with False assumed before and after, they alternate start, end.
    edges = np.flatnonzero(np.diff(inside, prepend=False, append=False))
    return edges[0::2], edges[1::2]
