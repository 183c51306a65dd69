"""The words that Gopher's quality and repetition rules count: the whitespace-separated tokens with a letter or
digit. Punctuation standing alone (as in WikiText's " , " and " @-@ ") is no word. Found as arrays over the text's
code points: a Python list of a document's words took as long as all the rules that read it."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from lmpre.data.codepoints import LETTER, SPACE, WORD_CHAR, codepoints, runs, span_hashes, word_classes


@dataclass(frozen=True)
class Words:
    """The words of one text, in order: where each starts and ends (code point offsets, text[start:end] is the
    word), and an id per word, equal for equal words."""

    starts: NDArray[np.int64]
    ends: NDArray[np.int64]
    ids: NDArray[np.int64]  # in [0, len(self))
    with_letter: int  # words with a letter (not only digits and punctuation)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def lengths(self) -> NDArray[np.int64]:
        return self.ends - self.starts


@functools.lru_cache(maxsize=1)
def words_of(text: str) -> Words:
    """The words of `text`. The last text's are kept, so the filters that follow one another on a document split it
    once (callers must not change the arrays)."""
    points = codepoints(text)
    classes = word_classes()[points]
    starts, ends = runs(classes & SPACE == 0)
    if len(starts) == 0:
        empty = np.zeros(0, np.int64)
        return Words(empty, empty, empty, 0)
    # The OR of each token's classes; the whitespace after a token has neither WORD_CHAR nor LETTER.
    token_classes = np.bitwise_or.reduceat(classes, starts)
    is_word = token_classes & WORD_CHAR != 0
    starts, ends = starts[is_word], ends[is_word]
    _, ids = np.unique(span_hashes(points, starts, ends), return_inverse=True)
    return Words(starts, ends, ids.astype(np.int64), int(np.count_nonzero(token_classes[is_word] & LETTER)))
