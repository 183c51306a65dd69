import bz2
import dataclasses
import tracemalloc
from collections import Counter
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from lmpre.data.document import Document
from lmpre.data.sources.mediawiki import MediaWiki, wikitext_to_text
from lmpre.errors import DataError

MARKUP = ["[[", "]]", "{{", "}}", "<ref", "'''", "|-"]


def read_all(source: MediaWiki, stats: Counter[str]) -> list[Document]:
    return [doc for unit in source.work_units() for doc in source.read(unit, stats)]


def write_dump(path: Path, pages: list[tuple[str, int, str]], redirect: str | None = None) -> Path:
    """A dump in the export-0.11 namespace: (title, namespace, wikitext) per page."""
    xml = ['<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11" xml:lang="en">']
    for number, (title, namespace, text) in enumerate(pages):
        redirect_element = f'<redirect title="{redirect}" />' if title == redirect else ""
        xml.append(
            f"<page><title>{escape(title)}</title><ns>{namespace}</ns><id>{number}</id>{redirect_element}"
            f'<revision><id>{number}</id><text bytes="{len(text)}" xml:space="preserve">{escape(text)}</text>'
            "</revision></page>"
        )
    xml.append("</mediawiki>\n")
    data = "\n".join(xml).encode()
    path.write_bytes(bz2.compress(data) if path.suffix == ".bz2" else data)
    return path


@pytest.fixture(scope="module")
def enwiki(enwiki_dump: Path) -> tuple[list[Document], Counter[str]]:
    """Every article of the sample dump, read and cleaned (a few seconds: read once for the module)."""
    source = MediaWiki(str(enwiki_dump))
    stats: Counter[str] = Counter()
    docs = []
    for doc in read_all(source, stats):
        cleaned = source.clean(doc)
        assert isinstance(cleaned, Document), f"{doc.id}: {cleaned}"
        docs.append(cleaned)
    return docs, stats


def test_sample_dump_yields_articles_without_markup(enwiki: tuple[list[Document], Counter[str]]) -> None:
    docs, stats = enwiki
    # One of the 100 redirects is the one page outside the article namespace.
    assert stats == {"skipped.redirect": 99, "skipped.disambiguation": 8, "skipped.namespace": 1}
    assert len(docs) == 206 - 108
    ids = {doc.id for doc in docs}
    assert {"Anarchism", "Albedo", "Algorithm", "Answer"} <= ids
    assert not ids & {"AccessibleComputing", "AfghanistanHistory", "Alien", "Austin (disambiguation)", "Aa River"}
    for doc in docs:
        assert not [mark for mark in MARKUP if mark in doc.text], doc.id
        assert not doc.text.upper().startswith("#REDIRECT"), doc.id
    anarchism = next(doc for doc in docs if doc.id == "Anarchism")
    assert anarchism.text.startswith(
        "Anarchism is a political philosophy that advocates self-governed societies based on voluntary institutions."
    )
    assert "\n\nEtymology and terminology\n\n" in anarchism.text  # headings are lines of their own
    assert anarchism.metadata == {"page_id": "12"}


def test_markup_becomes_plain_text() -> None:
    wikitext = """{{Infobox person|name=Ada}}
'''Ada Lovelace''' ({{IPA|ˈlʌvleɪs}}) was an [[England|English]] [[mathematician]]<ref>{{cite book|title=X}}</ref>
and ''writer''.<ref name="a/b"/> See [http://example.org her notes] &amp; letters.[http://example.org/2]<!-- hidden -->
[[File:Ada.jpg|thumb|Ada, [[1840]]]]
[[Category:Mathematicians]] [[fr:Ada Lovelace]]

== Work ==
The note <math>B_7</math> computes [[Bernoulli number]]s.
{| class="wikitable"
|-
! Year !! Event
|-
| 1843 || Notes
|}
<gallery>
A.jpg|Caption
</gallery>

== References ==
{{Reflist}}
<references />
"""
    assert wikitext_to_text(wikitext) == (
        "Ada Lovelace was an English mathematician\nand writer. See her notes & letters.\n\n"
        "Work\n\nThe note computes Bernoulli numbers."
    )


def test_small_dump_skips_what_is_not_an_article(tmp_path: Path) -> None:
    pages = [
        ("Lobster", 0, "The '''European lobster''' is a [[crustacean]]."),
        ("Homard", 0, "#REDIRECT [[Lobster]]"),
        ("Crab", 0, "anything"),  # a <redirect> element, whatever the text
        ("Mercury", 0, "'''Mercury''' may refer to:\n* [[Mercury (planet)]]\n\n{{Disambiguation|geo}}"),
        ("Lobster (disambiguation)", 0, "* [[Lobster]]"),
        ("Talk:Lobster", 1, "Is it blue?"),
        ("Empty", 0, "{{Stub}}\n[[Category:Stubs]]"),
    ]
    source = MediaWiki(str(write_dump(tmp_path / "small.xml", pages, redirect="Crab")))
    stats: Counter[str] = Counter()
    docs = read_all(source, stats)
    assert stats == {"skipped.redirect": 2, "skipped.disambiguation": 2, "skipped.namespace": 1}
    assert [(doc.id, doc.metadata) for doc in docs] == [("Lobster", {"page_id": "0"}), ("Empty", {"page_id": "6"})]
    lobster = dataclasses.replace(docs[0], text="The European lobster is a crustacean.")
    assert [source.clean(doc) for doc in docs] == [lobster, "mediawiki.empty"]


def test_memory_stays_flat_while_streaming(tmp_path: Path) -> None:
    text = "Lobsters are [[crustacean]]s of the family Nephropidae. " * 40
    path = write_dump(tmp_path / "big.xml", [(f"Page {number}", 0, text) for number in range(3000)])
    source = MediaWiki(str(path))
    tracemalloc.start()
    try:
        count = sum(1 for _ in source.read(source.work_units()[0], Counter()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 3000
    assert path.stat().st_size > 6_000_000
    assert peak < 1_000_000  # a few pages at a time, not the 6 MB tree


def test_truncated_dump_names_the_file(tmp_path: Path, enwiki_dump: Path) -> None:
    truncated = tmp_path / "enwiki-truncated.xml.bz2"
    truncated.write_bytes(enwiki_dump.read_bytes()[:300_000])
    with pytest.raises(DataError, match=rf"{truncated} cannot be read \(EOFError.*truncated or corrupt"):
        read_all(MediaWiki(str(truncated)), Counter())


def test_malformed_xml_and_other_xml_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.xml"
    broken.write_text('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">\n<page><title>A</title>\n')
    with pytest.raises(DataError, match=rf"{broken} line 3, column 0: not well-formed XML"):
        read_all(MediaWiki(str(broken)), Counter())
    other = tmp_path / "feed.xml"
    other.write_text("<rss><channel/></rss>")
    with pytest.raises(DataError, match=r"feed\.xml is not a MediaWiki XML dump \(its root element is <rss>"):
        read_all(MediaWiki(str(other)), Counter())
