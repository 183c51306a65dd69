"""Gopher's quality rules (Rae et al. 2021, "Scaling Language Models", appendix A.1.1): cheap statistics that tell
prose from tables, lists, boilerplate and gibberish."""

from __future__ import annotations

import re
from collections.abc import Sequence

from lmpre.data.codepoints import word_classes
from lmpre.data.document import Document
from lmpre.data.filters.base import Filter
from lmpre.data.filters.words import words_of

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
BULLETS = ("-", "*", "•", "‣", "⁃", "◦", "▪", "▫", "●", "○", "■", "□", "►", "➢")
ELLIPSES = ("...", "…")


class GopherQuality(Filter):
    """Drops documents that are too short or long, made of very short or long words, full of `#` or ellipses,
    mostly bullet points or cut-off lines, mostly numbers, or without common English words. The defaults are
    Gopher's thresholds; None switches a rule off.

    Words are as `words_of` finds them: tokens with a letter or digit. Lines are the non-blank lines.
    """

    name = "gopher_quality"

    def __init__(
        self,
        min_words: int | None = 50,
        max_words: int | None = 100_000,
        min_mean_word_length: float | None = 3,
        max_mean_word_length: float | None = 10,
        max_symbol_word_ratio: float | None = 0.1,
        max_bullet_lines: float | None = 0.9,
        max_ellipsis_lines: float | None = 0.3,
        min_alpha_words: float | None = 0.8,
        min_stop_words: int | None = 2,
        stop_words: Sequence[str] = STOP_WORDS,
    ):
        self.min_words = min_words
        self.max_words = max_words
        self.min_mean_word_length = min_mean_word_length
        self.max_mean_word_length = max_mean_word_length
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_lines = max_bullet_lines
        self.max_ellipsis_lines = max_ellipsis_lines
        self.min_alpha_words = min_alpha_words
        self.min_stop_words = min_stop_words
        self.stop_words = list(stop_words)
        self._stop_word = re.compile(rf"\b(?:{'|'.join(map(re.escape, stop_words))})\b", re.IGNORECASE)

    def prepare(self) -> None:
        word_classes()

    def __call__(self, document: Document) -> Document | str:
        text = document.text
        words = words_of(text)
        n_words = len(words)
        if (self.min_words is not None and n_words < self.min_words) or (
            self.max_words is not None and n_words > self.max_words
        ):
            return self.drop("word_count")
        if n_words == 0:  # every rule below is a share of words
            return document

        mean_length = int(words.lengths.sum()) / n_words
        if (self.min_mean_word_length is not None and mean_length < self.min_mean_word_length) or (
            self.max_mean_word_length is not None and mean_length > self.max_mean_word_length
        ):
            return self.drop("mean_word_length")

        if self.max_symbol_word_ratio is not None:
            hashes = text.count("#")
            ellipses = text.count("...") + text.count("…")
            if max(hashes, ellipses) / n_words > self.max_symbol_word_ratio:
                return self.drop("symbol_ratio")

        if self.max_bullet_lines is not None or self.max_ellipsis_lines is not None:
            lines = [line.strip() for line in text.split("\n")]
            lines = [line for line in lines if line]
            bullets = sum(line.startswith(BULLETS) for line in lines)
            if self.max_bullet_lines is not None and bullets > self.max_bullet_lines * len(lines):
                return self.drop("bullet_lines")
            ellipses = sum(line.endswith(ELLIPSES) for line in lines)
            if self.max_ellipsis_lines is not None and ellipses > self.max_ellipsis_lines * len(lines):
                return self.drop("ellipsis_lines")

        if self.min_alpha_words is not None and words.with_letter < self.min_alpha_words * n_words:
            return self.drop("alpha_words")

        if self.min_stop_words is not None and not self._has_stop_words(text, self.min_stop_words):
            return self.drop("stop_words")
        return document

    def _has_stop_words(self, text: str, count: int) -> bool:
        """Whether `text` holds at least `count` different stop words; stops reading once it does."""
        seen: set[str] = set()
        for match in self._stop_word.finditer(text):
            seen.add(match.group().lower())
            if len(seen) >= count:
                return True
        return len(seen) >= count
