from collections import Counter
from pathlib import Path

import pytest

from lmpre.data.document import Document
from lmpre.data.sources.gutenberg import Gutenberg

# A sentence from the body of a book, as it stands there (hard-wrapped).
KNOWN_SENTENCES = {
    "pride_and_prejudice.txt": "It is a truth universally acknowledged, that a single man in possession\n"
    "of a good fortune must be in want of a wife.",
    "moby_dick.txt": "Call me Ishmael.",
    "a_tale_of_two_cities.txt": "It was the best of times,\nit was the worst of times,",
    "alice_in_wonderland.txt": "Alice was beginning to get very tired of sitting by her sister on the\nbank",
    "ulysses.txt": "yes I said yes I will Yes.\n\nTrieste-Zurich-Paris\n\n1914-1921",  # the very end
}


def read_all(source: Gutenberg, stats: Counter[str]) -> list[Document]:
    return [doc for unit in source.work_units() for doc in source.read(unit, stats)]


@pytest.fixture(scope="module")
def books(gutenberg_books: Path) -> dict[str, Document]:
    stats: Counter[str] = Counter()
    docs = read_all(Gutenberg(str(gutenberg_books)), stats)
    assert not stats  # every book has both markers
    return {doc.id: doc for doc in docs}


def test_books_lose_the_license_and_keep_the_text(books: dict[str, Document]) -> None:
    assert len(books) == 20
    for name, book in books.items():
        assert "project gutenberg" not in book.text.lower(), name
        assert "\ufeff" not in book.text, name
        assert "\r" not in book.text, name
        assert book.text == book.text.rstrip(), name
        assert book.text.strip().startswith(book.text.split("\n")[0].strip()), name  # no blank lines first
    for name, sentence in KNOWN_SENTENCES.items():
        assert sentence in books[name].text, name


def test_credits_are_dropped_and_the_header_feeds_the_metadata(books: dict[str, Document]) -> None:
    assert books["jane_eyre.txt"].text.startswith("JANE EYRE\nAN AUTOBIOGRAPHY")  # "Transcribed from …" is gone
    assert books["dracula.txt"].text.lstrip().startswith("DRACULA")  # "Produced by …" (four lines) is gone
    assert books["great_expectations.txt"].text.startswith("GREAT EXPECTATIONS\n\n[1867 Edition]")
    assert books["war_and_peace.txt"].metadata == {"title": "War and Peace", "author": "graf Leo Tolstoy"}


def test_older_markers_and_files_without_markers(tmp_path: Path) -> None:
    (tmp_path / "small_print.txt").write_bytes(
        b"The Project Gutenberg Etext of Old Tales\r\n\r\n**Welcome To The World of Free Plain Vanilla Etexts**\r\n"
        b"*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\r\n\r\n"
        b"Once upon a time.\r\n\r\nEnd of The Project Gutenberg Etext of Old Tales\r\n"
    )
    (tmp_path / "wrapped.txt").write_text(
        "Title: A Long Title\n\n*** START OF THIS PROJECT GUTENBERG EBOOK A VERY LONG TITLE THAT\nWRAPS ***\n\n"
        "Produced by a volunteer\nand a friend.\n\nChapter 1\n\nText.\n"
    )
    (tmp_path / "plain.txt").write_text("\ufeffJust a book.\r\nNo markers.\r\n", newline="")
    stats: Counter[str] = Counter()
    docs = read_all(Gutenberg(str(tmp_path)), stats)
    assert [(doc.id, doc.text, doc.metadata) for doc in docs] == [
        ("plain.txt", "Just a book.\nNo markers.", {}),
        ("small_print.txt", "Once upon a time.", {}),
        ("wrapped.txt", "Chapter 1\n\nText.", {"title": "A Long Title"}),
    ]
    assert stats == {"gutenberg.no_header": 1, "gutenberg.no_footer": 1}  # plain.txt; wrapped.txt
