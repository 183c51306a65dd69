"""Keep documents in the languages a model is trained on, as judged by py3langid (offline, 140 languages)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from lmpre.data.document import Document
from lmpre.data.filters.base import Filter
from lmpre.errors import ConfigError


@functools.cache
def identifier() -> Any:
    """py3langid's model with probabilities as scores, loaded on first use, once per process (0.5 s)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


class Language(Filter):
    """Drops a document whose language is not one of `languages` (ISO 639-1 codes as py3langid names them, e.g.
    `en`, `de`, `zh`), with reason `language.<detected>`, or whose detection scores below `min_score`
    (`language.low_score`: mixed, code, tables, too short to tell).

    Only the first `max_chars` characters are read: py3langid reads about 1 MB/s, and a page of text tells the
    language as well as a book does.
    """

    name = "language"

    def __init__(self, languages: Sequence[str] = ("en",), min_score: float = 0.65, max_chars: int = 2000):
        if not languages:
            raise ConfigError("data.filters.language.languages is empty: name the languages to keep, e.g. [en].")
        self.languages = list(languages)
        self.min_score = min_score
        self.max_chars = max_chars

    def prepare(self) -> None:
        identifier()

    def __call__(self, document: Document) -> Document | str:
        model = identifier()
        language, score = model.classify(document.text[: self.max_chars])
        if language not in self.languages:
            unknown = set(self.languages) - set(model.labels)
            if unknown:  # a misspelt code would otherwise drop every document
                raise ConfigError(
                    f"data.filters.language.languages={self.languages}: py3langid does not know {sorted(unknown)}; "
                    f"use its codes: {', '.join(sorted(model.labels))}."
                )
            return self.drop(language)
        if score < self.min_score:
            return self.drop("low_score")
        return document
