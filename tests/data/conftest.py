import lzma

import pytest

from lmpre.data.corpora import bundled
from lmpre.data.sources.wikitext import wikitext_articles


@pytest.fixture(scope="session")
def articles() -> list[str]:
    """The 60 articles of the bundled WikiText-2 validation file, as its source reads them."""
    lines = lzma.decompress((bundled("wikitext-2-raw") / "wiki.valid.raw.xz").read_bytes()).decode().split("\n")
    return ["\n".join(article).strip("\n") for article in wikitext_articles(lines) if "".join(article).strip()]
