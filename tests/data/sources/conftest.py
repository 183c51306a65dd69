import re
from pathlib import Path

import pytest

from lmpre.data.corpora import bundled
from lmpre.data.sources.base import open_binary

# " = Title = " opens a WikiText article (" = = Section = = " lines stay inside it).
TITLE = re.compile(r"^ = (?!=)(.*?) = $", re.MULTILINE)


@pytest.fixture(scope="session")
def wikitext_articles() -> list[tuple[str, str]]:
    """(title, text) of the 60 articles of the bundled WikiText-2 validation file: real text, no network."""
    with open_binary(bundled("wikitext-2-raw") / "wiki.valid.raw.xz") as file:
        raw = file.read().decode("utf-8")
    starts = list(TITLE.finditer(raw))
    ends = [match.start() for match in starts[1:]] + [len(raw)]
    return [(match[1], raw[match.end() : end].strip()) for match, end in zip(starts, ends, strict=True)]


@pytest.fixture(scope="session")
def enwiki_dump(shared_data: Path) -> Path:
    """The shortened English Wikipedia dump (206 pages, bz2) in ../shared/data."""
    return shared_data / "enwiki-sample" / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


@pytest.fixture(scope="session")
def gutenberg_books(shared_data: Path) -> Path:
    """The 20 Project Gutenberg books in ../shared/data (CRLF, BOMs, four styles of markers)."""
    return shared_data / "gutenberg"
