"""Gopher's repetition rules (Rae et al. 2021, table A1): text that repeats itself, in lines, paragraphs or word
n-grams, is boilerplate, spam or a degenerate crawl, and teaches a model to loop."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray

from lmpre.data.codepoints import word_classes
from lmpre.data.document import Document
from lmpre.data.filters.base import Filter
from lmpre.data.filters.words import words_of

PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


class GopherRepetition(Filter):
    """Drops documents whose lines, paragraphs or word n-grams repeat too much. The defaults are Gopher's
    thresholds; None switches a rule off.

    - `max_duplicate_lines` / `max_duplicate_paragraphs`: share of the (non-blank) lines or paragraphs that repeat
      an earlier one; `..._chars`: the share of their characters.
    - `max_top_{n}gram_chars` (n = 2..4): characters of the most frequent word n-gram, times its count, as a share
      of all word characters; only n-grams that occur more than once count.
    - `max_duplicate_{n}gram_chars` (n = 5..10): share of word characters inside any n-gram that occurs more than
      once, each character counted once however many such n-grams overlap it.

    Words are as `words_of` finds them (tokens with a letter or digit); their characters exclude whitespace.
    """

    name = "gopher_repetition"

    def __init__(
        self,
        max_duplicate_lines: float | None = 0.30,
        max_duplicate_paragraphs: float | None = 0.30,
        max_duplicate_line_chars: float | None = 0.20,
        max_duplicate_paragraph_chars: float | None = 0.20,
        max_top_2gram_chars: float | None = 0.20,
        max_top_3gram_chars: float | None = 0.18,
        max_top_4gram_chars: float | None = 0.16,
        max_duplicate_5gram_chars: float | None = 0.15,
        max_duplicate_6gram_chars: float | None = 0.14,
        max_duplicate_7gram_chars: float | None = 0.13,
        max_duplicate_8gram_chars: float | None = 0.12,
        max_duplicate_9gram_chars: float | None = 0.11,
        max_duplicate_10gram_chars: float | None = 0.10,
    ):
        self.max_duplicate_lines = max_duplicate_lines
        self.max_duplicate_paragraphs = max_duplicate_paragraphs
        self.max_duplicate_line_chars = max_duplicate_line_chars
        self.max_duplicate_paragraph_chars = max_duplicate_paragraph_chars
        self.max_top_2gram_chars = max_top_2gram_chars
        self.max_top_3gram_chars = max_top_3gram_chars
        self.max_top_4gram_chars = max_top_4gram_chars
        self.max_duplicate_5gram_chars = max_duplicate_5gram_chars
        self.max_duplicate_6gram_chars = max_duplicate_6gram_chars
        self.max_duplicate_7gram_chars = max_duplicate_7gram_chars
        self.max_duplicate_8gram_chars = max_duplicate_8gram_chars
        self.max_duplicate_9gram_chars = max_duplicate_9gram_chars
        self.max_duplicate_10gram_chars = max_duplicate_10gram_chars

    def prepare(self) -> None:
        word_classes()

    def __call__(self, document: Document) -> Document | str:
        text = document.text
        line_share, line_char_share = duplicate_shares([line for line in text.split("\n") if line.strip()])
        if self.max_duplicate_lines is not None and line_share > self.max_duplicate_lines:
            return self.drop("duplicate_lines")
        if self.max_duplicate_line_chars is not None and line_char_share > self.max_duplicate_line_chars:
            return self.drop("duplicate_line_chars")
        paragraph_share, paragraph_char_share = duplicate_shares([p for p in PARAGRAPH_BREAK.split(text) if p.strip()])
        if self.max_duplicate_paragraphs is not None and paragraph_share > self.max_duplicate_paragraphs:
            return self.drop("duplicate_paragraphs")
        if self.max_duplicate_paragraph_chars is not None and paragraph_char_share > self.max_duplicate_paragraph_chars:
            return self.drop("duplicate_paragraph_chars")

        top = {2: self.max_top_2gram_chars, 3: self.max_top_3gram_chars, 4: self.max_top_4gram_chars}
        duplicate = {
            5: self.max_duplicate_5gram_chars,
            6: self.max_duplicate_6gram_chars,
            7: self.max_duplicate_7gram_chars,
            8: self.max_duplicate_8gram_chars,
            9: self.max_duplicate_9gram_chars,
            10: self.max_duplicate_10gram_chars,
        }
        enabled = [n for n, limit in (top | duplicate).items() if limit is not None]
        if not enabled:
            return document
        words = words_of(text)
        ngrams = NgramCounts(words.ids, words.lengths)
        for n, counts in ngrams.up_to(max(enabled)):
            top_limit, duplicate_limit = top.get(n), duplicate.get(n)
            if top_limit is not None and ngrams.top_chars(n, counts) > top_limit * ngrams.total_chars:
                return self.drop(f"top_{n}gram_chars")
            if duplicate_limit is not None:
                chars = ngrams.duplicate_chars(n, counts)
                if chars > duplicate_limit * ngrams.total_chars:
                    return self.drop(f"duplicate_{n}gram_chars")
                # A word inside a repeated (n+1)-gram is inside a repeated n-gram (its prefix repeats too), so longer
                # n-grams cover no more: under every longer n's limit, none of them can drop the document.
                longer = [limit for m, limit in duplicate.items() if m > n and limit is not None]
                if all(chars <= limit * ngrams.total_chars for limit in longer):
                    return document
        return document


def duplicate_shares(pieces: list[str]) -> tuple[float, float]:
    """The share of `pieces` equal to an earlier one, and the share of characters in those."""
    seen: set[str] = set()
    duplicates = duplicate_chars = 0
    for piece in pieces:
        if piece in seen:
            duplicates += 1
            duplicate_chars += len(piece)
        else:
            seen.add(piece)
    total_chars = sum(map(len, pieces))
    return duplicates / max(len(pieces), 1), duplicate_chars / max(total_chars, 1)


class NgramCounts:
    """How often each word n-gram of a document occurs, for n = 2, 3, ... in turn: about linear in the number of
    words, and exact given the words' ids (`words_of`'s, from 64-bit hashes of the words).

    An n-gram can only repeat where the (n-1)-grams at its position and the next both repeat, so each step sorts
    just those candidates; in prose they fall from about half the positions for 2-grams to a few percent for 5-grams.
    """

    def __init__(self, ids: NDArray[np.int64], lengths: NDArray[np.int64]):
        self.ids = ids  # of the words, in [0, len(ids))
        self.cumulative_chars = np.concatenate(([0], np.cumsum(lengths)))
        self.total_chars = int(self.cumulative_chars[-1])

    def up_to(self, max_n: int) -> Iterator[tuple[int, NDArray[np.int64]]]:
        """(n, the count of the n-gram starting at each position) for n = 2..max_n."""
        n_words = len(self.ids)
        grams = self.ids  # the id of the (n-1)-gram at each position; only those at candidates are read
        counts = np.bincount(self.ids, minlength=n_words)[self.ids]
        for n in range(2, max_n + 1):
            positions = n_words - n + 1
            if positions <= 0:
                return
            repeated = counts >= 2
            candidates = np.flatnonzero(repeated[:positions] & repeated[1 : positions + 1])
            if len(candidates) == 0:  # nothing repeats at n, so nothing longer does
                return
            # Pair each candidate's (n-1)-gram with the word that extends it, as one int64 (both are < n_words).
            keys = grams[candidates] * n_words + self.ids[candidates + n - 1]
            _, inverse, key_counts = np.unique(keys, return_inverse=True, return_counts=True)
            counts = np.ones(positions, np.int64)
            counts[candidates] = key_counts[inverse]
            grams = np.full(positions, -1, np.int64)
            grams[candidates] = inverse
            yield n, counts

    def top_chars(self, n: int, counts: NDArray[np.int64]) -> int:
        """Characters of the most frequent n-gram (the longest, among equally frequent ones) times its count."""
        most = int(counts.max(initial=0))
        if most < 2:
            return 0
        starts = np.flatnonzero(counts == most)
        return most * int((self.cumulative_chars[starts + n] - self.cumulative_chars[starts]).max())

    def duplicate_chars(self, n: int, counts: NDArray[np.int64]) -> int:
        """Characters of the words covered by an n-gram that occurs more than once."""
        starts = np.flatnonzero(counts >= 2)
        depth = np.zeros(len(self.ids) + 1, np.int64)  # +1 where a repeated n-gram starts, -1 where it ends
        depth[starts] += 1
        depth[starts + n] -= 1
        covered = np.cumsum(depth[:-1]) > 0
        word_chars = np.diff(self.cumulative_chars)
        return int(word_chars[covered].sum())
