"""Raw text files -> cleaned documents: whole WikiText articles, or one document per file."""

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lmpre.errors import DataError

FORMATS = ("wikitext", "text")
# " = Title = " opens an article: exactly one "=" each side (" = = Section = = " lines stay inside the article).
_TITLE = r"^ = (?!=).*(?<!=) =\s*$"
_TITLE_LINE = re.compile(_TITLE)
_TITLE_LINE_BYTES = re.compile(_TITLE.encode())


@dataclass(frozen=True)
class TextSpan:
    """A byte range of one file that starts and ends on document boundaries: the unit of tokenization work."""

    path: str
    start: int
    end: int


def split_spans(path: Path, format: str, target_bytes: int) -> list[TextSpan]:
    """Cut a file into spans of about `target_bytes` (never inside a document) so workers use bounded memory."""
    size = path.stat().st_size
    if format == "text":
        return [TextSpan(str(path), 0, size)]
    spans, start, offset = [], 0, 0
    with path.open("rb") as file:
        for line in file:
            if offset - start >= target_bytes and _TITLE_LINE_BYTES.match(line):
                spans.append(TextSpan(str(path), start, offset))
                start = offset
            offset += len(line)
    spans.append(TextSpan(str(path), start, size))
    return spans


def read_documents(span: TextSpan, format: str) -> Iterator[str]:
    """The cleaned, non-empty documents of a span."""
    with Path(span.path).open("rb") as file:
        file.seek(span.start)
        data = file.read(span.end - span.start)
    try:
        text = data.decode("utf-8-sig")  # -sig drops the byte-order mark some files (Gutenberg) start with
    except UnicodeDecodeError as err:
        raise DataError(f"{span.path} is not UTF-8 text ({err}): convert it or leave it out of data.splits.") from err
    lines = text.replace("\r\n", "\n").split("\n")
    for document in wikitext_articles(lines) if format == "wikitext" else [lines]:
        if cleaned := clean_document(document):
            yield cleaned


def wikitext_articles(lines: Iterable[str]) -> Iterator[list[str]]:
    """Group lines into articles, each starting at its top-level title line."""
    article: list[str] = []
    for line in lines:
        if _TITLE_LINE.match(line):
            yield article
            article = []
        article.append(line)
    yield article


def clean_document(lines: Iterable[str]) -> str:
    """Strip trailing whitespace and keep one blank line between paragraphs, none at either end."""
    kept: list[str] = []
    for line in map(str.rstrip, lines):
        if line or (kept and kept[-1]):
            kept.append(line)
    if kept and not kept[-1]:
        kept.pop()
    return "\n".join(kept)
