from itertools import pairwise
from pathlib import Path

import pytest

from lmpre.data.documents import TextSpan, clean_document, read_documents, split_spans
from lmpre.errors import DataError


def documents(path: Path, format: str, span_bytes: int = 2**30) -> list[str]:
    return [doc for span in split_spans(path, format, span_bytes) for doc in read_documents(span, format)]


def test_wikitext_articles_start_at_their_title_and_keep_their_sections(shared_data: Path) -> None:
    raw = shared_data / "wikitext-2-raw" / "wiki.valid.raw"
    articles = documents(raw, "wikitext")
    assert len(articles) == 60  # top-level titles in wiki.valid.raw
    assert articles[0].startswith(" = Homarus gammarus =\n\n Homarus gammarus , known as the European lobster")
    for article in articles:
        title, *body = article.split("\n")
        assert title.startswith(" = ")
        assert not title.startswith(" = =")
        assert not any(line.startswith(" = ") and not line.startswith(" = =") for line in body)
    assert sum(article.count("\n = = ") for article in articles) > 100  # sections stay inside articles


def test_spans_never_cut_an_article(shared_data: Path) -> None:
    raw = shared_data / "wikitext-2-raw" / "wiki.valid.raw"
    spans = split_spans(raw, "wikitext", 100_000)
    assert len(spans) > 5
    assert all(before.end == after.start for before, after in pairwise(spans))
    assert spans[-1].end == raw.stat().st_size
    assert documents(raw, "wikitext", 100_000) == documents(raw, "wikitext")


def test_cleaning_normalizes_line_ends_whitespace_and_blank_runs(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    path.write_bytes("\ufeffTitle  \r\n\r\n\r\n\r\nFirst paragraph\t\r\nsame one\r\n \r\nSecond\r\n\r\n".encode())
    assert documents(path, "text") == ["Title\n\nFirst paragraph\nsame one\n\nSecond"]
    assert clean_document(["", "  ", "x", "", "", "  y", " "]) == "x\n\n  y"


def test_blank_documents_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "wiki.raw"
    path.write_text(" \n = Empty =\n \n = Full =\n \n text \n")
    assert documents(path, "wikitext") == [" = Empty =", " = Full =\n\n text"]
    (tmp_path / "blank.txt").write_text(" \n\n\t\n")
    assert documents(tmp_path / "blank.txt", "text") == []


def test_non_utf8_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt is not UTF-8"):
        list(read_documents(TextSpan(str(path), 0, path.stat().st_size), "text"))
