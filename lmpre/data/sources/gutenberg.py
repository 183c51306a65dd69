"""Project Gutenberg e-texts: one document per book, without the Project Gutenberg license header and footer."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from lmpre.data.document import Document
from lmpre.data.sources.base import Source, WorkUnit, read_compressed

# Where the book begins, in the four generations of PG boilerplate: "*** START OF THE/THIS PROJECT GUTENBERG
# EBOOK TITLE ***" (spaced or not, a long title wrapped onto a second line), or the end of the 1990s small print.
_START = re.compile(
    r"^[ \t]*\*{3}[ \t]*START OF (?:THE |THIS )?PROJECT GUTENBERG"
    r"(?:[^\n]*\*{3}[ \t]*$|[^\n]*\n[^\n]*\*{3}[ \t]*$|[^\n]*$)"
    r"|^[^\n]*\*END\*THE SMALL PRINT![^\n]*$",
    re.IGNORECASE | re.MULTILINE,
)
# Where it ends: "*** END OF THE/THIS PROJECT GUTENBERG EBOOK ***" (indented in 2022–2023), or the line before
# it, "End of the Project Gutenberg EBook of …" / "End of Project Gutenberg's …".
_END = re.compile(r"^[ \t]*(?:\*+[ \t]*)?END OF (?:THE |THIS )?PROJECT GUTENBERG", re.IGNORECASE | re.MULTILINE)
# Credits of the volunteers who made the e-text, in the first paragraph after the start marker.
_CREDITS = re.compile(
    r"(?:produced by|prepared by|e-?text prepared by|transcribed (?:from|by)|this e-?(?:book|text) was)",
    re.IGNORECASE,
)
_PARAGRAPH_BREAK = re.compile(r"(\n(?:[ \t]*\n)+)")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")
_TITLE = re.compile(r"^Title:[ \t]*(.+?)[ \t]*$", re.MULTILINE)
_AUTHOR = re.compile(r"^Author:[ \t]*(.+?)[ \t]*$", re.MULTILINE)


class Gutenberg(Source):
    """Project Gutenberg books (`*.txt`, plain or compressed), one document per file, id = file name.

    The BOM is dropped and line ends become "\\n"; the text between the START and END markers is kept, without
    the volunteers' credits and PG's notes ("[Project Gutenberg Editor's Note: …]"), so no document carries the
    PG license or trademark. A file without a start marker is kept whole and counted `gutenberg.no_header`; one
    without an end marker is kept to its end and counted `gutenberg.no_footer`. Title and author from the header
    go into the metadata.
    """

    patterns = ("*.txt", "*.txt.gz", "*.txt.bz2", "*.txt.xz", "*.txt.zst")

    def read(self, unit: WorkUnit, stats: Counter[str]) -> Iterator[Document]:
        path = Path(unit.path)
        text = self.decode(read_compressed(path, self.setting), str(path), stats).removeprefix("\ufeff")
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        start = _START.search(text)
        if start is None:
            stats["gutenberg.no_header"] += 1
            book, metadata = text, {}
        else:
            end = _END.search(text, start.end())
            if end is None:
                stats["gutenberg.no_footer"] += 1
            book = strip_notes(text[start.end() : end.start() if end else len(text)])
            header = text[: start.start()]
            metadata = {
                key: match[1]
                for key, match in (("title", _TITLE.search(header)), ("author", _AUTHOR.search(header)))
                if match
            }
        book = _LEADING_BLANK_LINES.sub("", book).rstrip()
        if not book:
            stats["skipped.empty"] += 1
            return
        yield self.document(book, path.name, **metadata)


def strip_notes(book: str) -> str:
    """The book without what Project Gutenberg added inside the markers: the credits paragraph that opens it and
    any paragraph that names Project Gutenberg (editor's and transcriber's notes)."""
    parts = _PARAGRAPH_BREAK.split(_LEADING_BLANK_LINES.sub("", book))  # paragraph, break, paragraph, …
    kept = []
    for index in range(0, len(parts), 2):
        paragraph, paragraph_break = parts[index], "".join(parts[index + 1 : index + 2])
        if (index == 0 and _CREDITS.match(paragraph.lstrip())) or "project gutenberg" in paragraph.lower():
            continue
        kept.append(paragraph + paragraph_break)
    return "".join(kept)
