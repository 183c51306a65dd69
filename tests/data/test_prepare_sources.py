"""Acceptance tests of the new sources through the real pipeline, composed from the Hydra configs as users compose
them (`python -m lmpre.prepare data=NAME data.source=PATH`): what reaches the token shards, decoded back to text."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra.utils import instantiate
from hydra_configs import compose_config
from litdata import StreamingDataset, TokensLoader
from test_train import TINY as TRAIN_TINY

from lmpre.data import Document, TokenDataModule
from lmpre.data.corpora import bundled
from lmpre.data.document import SPLITS
from lmpre.data.filters import Normalize
from lmpre.data.sources.base import open_binary

VOCAB = "data.tokenizer.vocab_size=512"
# " = Title = " opens a WikiText article (" = = Section = = " lines stay inside it).
TITLE = re.compile(r"^ = (?!=)(.*?) = $", re.MULTILINE)
# tests/test_train.py's tiny model, without the causal LM's sample_tokens (BERT and T5 have none).
TINY = [override for override in TRAIN_TINY if not override.startswith("model.sample_tokens")]


# --- helpers -------------------------------------------------------------------------------------------------------


def prepare(tmp: Path, *overrides: str) -> TokenDataModule:
    """`data=…` composed and prepared as the entry points do, into `tmp/prepared` with its cache in `tmp/cache`."""
    paths = [f"data.cache_dir={tmp / 'cache'}", f"data.output_dir={tmp / 'prepared'}"]
    cfg = compose_config("train", VOCAB, *paths, *overrides)
    datamodule: TokenDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    return datamodule


def decoded_documents(datamodule: TokenDataModule, split: str, source: str = "corpus") -> list[str]:
    """The documents of one split, read back from the shards with litdata and decoded.

    A split in one chunk is read whole (window = the whole chunk): every document, exactly. Over several chunks,
    windows of 4096 tokens are read and each chunk loses its tail (< 4096 tokens): the last document of a chunk
    comes back without its end (and without its end-of-text)."""
    split_dir = datamodule.prepared_dir / source / split
    if not (split_dir / "index.json").is_file():  # an empty split writes no chunk
        return []
    dims = [int(chunk["dim"]) for chunk in json.loads((split_dir / "index.json").read_text())["chunks"]]
    window = dims[0] if len(dims) == 1 else 4096
    dataset = StreamingDataset(str(split_dir), item_loader=TokensLoader(block_size=window))
    eot = datamodule.special_tokens["eot"]
    documents, first = [], 0
    for dim in dims:
        count = dim // window
        stream = np.concatenate([dataset[i] for i in range(first, first + count)]) if count else np.zeros(0, int)
        first += count
        bounds = [0, *(np.flatnonzero(stream == eot) + 1)]
        pieces = [stream[a : b - 1].tolist() for a, b in itertools.pairwise(bounds)]
        if bounds[-1] < len(stream):  # the chunk's tail was cut off: its last document, truncated
            pieces.append(stream[bounds[-1] :].tolist())
        documents += datamodule.tokenizer.decode_batch(pieces, skip_special_tokens=False)
    assert first == len(dataset)
    return documents


def all_decoded(datamodule: TokenDataModule) -> list[str]:
    return [doc for split in SPLITS for doc in decoded_documents(datamodule, split)]


def kept_documents(manifest: dict[str, Any], source: str = "corpus") -> int:
    return sum(manifest["sources"][source]["splits"][split]["documents"] for split in SPLITS)


def removed(report: dict[str, int], prefix: str = "removed.") -> int:
    return sum(count for reason, count in report.items() if reason.startswith(prefix))


def wikitext_articles() -> list[str]:
    """The 60 articles of the bundled WikiText-2 validation file (1.2 MB): real Wikipedia text, no network."""
    with open_binary(bundled("wikitext-2-raw") / "wiki.valid.raw.xz") as file:
        raw = file.read().decode("utf-8")
    titles = list(TITLE.finditer(raw))
    ends = [match.start() for match in titles[1:]] + [len(raw)]
    return [f"{m[1]}\n\n{raw[m.end() : end].strip()}" for m, end in zip(titles, ends, strict=True)]


def write_jsonl(path: Path, texts: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        for i, text in enumerate(texts):
            file.write(json.dumps({"id": i, "text": text}, ensure_ascii=False) + "\n")
    return path


def write_parquet(path: Path, texts: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": list(range(len(texts))), "text": list(texts)})
    pq.write_table(table, path, row_group_size=32)  # several row groups: several work units
    return path


def normalized(text: str) -> str:
    result = Normalize()(Document(text=text, id="x"))
    assert isinstance(result, Document)
    return result.text


def one_line(text: str) -> str:
    return " ".join(text.split())


# --- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def articles() -> list[str]:
    articles = wikitext_articles()
    assert len(articles) == 60
    return articles


@pytest.fixture(scope="module")
def jsonl_corpus(articles: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "articles.jsonl", articles)


@pytest.fixture(scope="module")
def jsonl_prepared(jsonl_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> TokenDataModule:
    """`data=jsonl` on the WikiText articles, prepared once for this module (training reuses it)."""
    return prepare(tmp_path_factory.mktemp("jsonl"), "data=jsonl", f"data.source={jsonl_corpus}")


# --- MediaWiki dump ------------------------------------------------------------------------------------------------


def test_enwiki_dump_becomes_plain_articles(shared_data: Path, tmp_path: Path) -> None:
    [dump] = (shared_data / "enwiki-sample").glob("*.bz2")
    datamodule = prepare(tmp_path, "data=enwiki", f"data.source={dump}")
    report = datamodule.manifest["sources"]["corpus"]["report"]
    assert report["skipped.redirect"] > 0
    kept = kept_documents(datamodule.manifest)
    assert kept > 50
    # The dump's 206 pages: each one read as an article, or skipped for a named reason.
    assert report["read.documents"] + removed(report, "skipped.") == 206

    documents = all_decoded(datamodule)
    assert len(documents) == kept
    text = "\n".join(documents)
    for markup in ("[[", "]]", "{{", "}}", "<ref", "'''", "|-"):
        assert markup not in text, (markup, text[max(text.find(markup) - 200, 0) :][:400])
    assert "#redirect" not in text.lower()
    assert any(doc.startswith("Anarchism is") for doc in documents)  # the dump's first article, as prose


# --- JSON Lines and Parquet ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    ["jsonl", "parquet", pytest.param("wiki+jsonl.zst", marks=pytest.mark.slow)],  # slow: one more preparation
)
def test_jsonl_and_parquet_sources_keep_or_count_every_document(
    kind: str, articles: list[str], jsonl_prepared: TokenDataModule, tmp_path: Path
) -> None:
    if kind == "jsonl":
        datamodule = jsonl_prepared
    elif kind == "parquet":
        corpus = write_parquet(tmp_path / "corpus" / "articles.parquet", articles)
        datamodule = prepare(tmp_path, "data=parquet", f"data.source={corpus}")
    else:  # the default data config with its source swapped, as a user would: normalize + dedup, no Gopher rules
        import zstandard

        corpus = tmp_path / "corpus" / "articles.jsonl.zst"
        plain = write_jsonl(tmp_path / "plain.jsonl", articles).read_bytes()
        corpus.parent.mkdir()
        corpus.write_bytes(zstandard.ZstdCompressor().compress(plain))
        datamodule = prepare(tmp_path, "data=wiki", "source@data.sources.corpus=jsonl", f"data.source={corpus}")

    manifest = datamodule.manifest
    report = manifest["sources"]["corpus"]["report"]
    kept = kept_documents(manifest)
    assert report["read.documents"] == len(articles)  # every record read, none skipped
    assert report["read.documents"] == kept + removed(report)  # documents in = documents out + removed
    assert kept > 0.8 * len(articles)
    if kind == "wiki+jsonl.zst":
        assert not removed(report, "removed.gopher")  # data=wiki has no Gopher rules
    else:
        assert removed(report, "removed.gopher_repetition") > 0  # a few articles repeat themselves too much

    documents = all_decoded(datamodule)
    assert len(documents) == kept
    assert len(set(documents)) == kept
    expected = {normalized(article) for article in articles}
    assert set(documents) <= expected  # the shards decode to the documents' (normalized) text, exactly
    assert {one_line(doc) for doc in documents} <= {one_line(article) for article in articles}


# --- Project Gutenberg ---------------------------------------------------------------------------------------------

SENTENCES = {
    "alice_in_wonderland.txt": "Alice was beginning to get very tired of sitting by her sister on the bank",
    "frankenstein.txt": "You will rejoice to hear that no disaster has accompanied the commencement of an enterprise",
    "picture_of_dorian_gray.txt": "The studio was filled with the rich odour of roses",
    "tom_sawyer.txt": "The old lady pulled her spectacles down and looked over them about the room",
    "pride_and_prejudice.txt": "It is a truth universally acknowledged, that a single man in possession",
    "moby_dick.txt": "Call me Ishmael.",
}
SMALL_BOOKS = ["alice_in_wonderland.txt", "frankenstein.txt", "picture_of_dorian_gray.txt", "tom_sawyer.txt"]


@pytest.mark.parametrize(
    "books",
    [
        pytest.param("small", id="four-books"),
        pytest.param("all", id="all-books", marks=pytest.mark.slow),  # 23 MB: ~40 s on 2 cores
    ],
)
def test_gutenberg_books_without_license_bom_or_carriage_returns(books: str, shared_data: Path, tmp_path: Path) -> None:
    gutenberg = shared_data / "gutenberg"
    if books == "small":  # a directory of four of them (links); 1 in 4 held out, so that val is not empty
        source = tmp_path / "books"
        source.mkdir()
        for name in SMALL_BOOKS:
            (source / name).symlink_to(gutenberg / name)
        fractions = ["data.sources.corpus.val_fraction=0.25", "data.sources.corpus.test_fraction=0"]
        overrides = [f"data.source={source}", *fractions]
    else:
        overrides = [f"data.source={gutenberg}"]
    datamodule = prepare(tmp_path, "data=books", *overrides)
    report = datamodule.manifest["sources"]["corpus"]["report"]
    names = SMALL_BOOKS if books == "small" else sorted(p.name for p in gutenberg.glob("*.txt"))
    assert report["read.documents"] == len(names)

    documents = all_decoded(datamodule)
    text = "\n".join(documents)
    assert "project gutenberg" not in text.lower()
    assert "\ufeff" not in text
    assert "\r" not in text
    flat = one_line(text)
    found = [name for name, sentence in SENTENCES.items() if name in names and sentence in flat]
    assert len(found) >= 3, found
    if books == "small":
        assert len(found) == len(SMALL_BOOKS)


# --- deduplication -------------------------------------------------------------------------------------------------


def test_a_corpus_concatenated_with_itself_prepares_to_the_same_documents(
    jsonl_corpus: Path, jsonl_prepared: TokenDataModule, tmp_path: Path
) -> None:
    twice = tmp_path / "corpus" / "twice.jsonl"
    twice.parent.mkdir()
    twice.write_bytes(jsonl_corpus.read_bytes() * 2)
    datamodule = prepare(tmp_path, "data=jsonl", f"data.source={twice}")
    once_report = jsonl_prepared.manifest["sources"]["corpus"]["report"]
    report = datamodule.manifest["sources"]["corpus"]["report"]
    assert report["read.documents"] == 2 * once_report["read.documents"]
    assert kept_documents(datamodule.manifest) == kept_documents(jsonl_prepared.manifest)
    # Every copy lands in the split of its original (hold-out by text) and is removed there.
    filtered_once = removed(once_report, "removed.") - removed(once_report, "removed.dedup")
    second_copies = once_report["read.documents"] - filtered_once  # the copies that pass the filters
    assert removed(report, "removed.dedup") == removed(once_report, "removed.dedup") + second_copies
    assert sorted(all_decoded(datamodule)) == sorted(all_decoded(jsonl_prepared))


def edit_words(text: str, every: int) -> str:
    """`text` with one word in `every` replaced: a near duplicate."""
    words = text.split(" ")
    for i in range(every // 2, len(words), every):
        if words[i].isalpha():
            words[i] = "zyzzyva"
    return " ".join(words)


def test_near_duplicates_are_removed_and_distinct_documents_kept(
    jsonl_prepared: TokenDataModule, tmp_path: Path
) -> None:
    originals = sorted(all_decoded(jsonl_prepared), key=len, reverse=True)  # the corpus's kept documents
    edited = {original: edit_words(original, 400) for original in originals[:5]}  # ~3 words each, >= 1000 words
    for original, copy in edited.items():  # a few words in each: at most one in 200
        changed = sum(a != b for a, b in zip(original.split(" "), copy.split(" "), strict=True))
        assert 1 <= changed <= len(original.split()) / 200
    # Half of one article and half of another: similar to both, far below the threshold (Jaccard ~ 1/3).
    a, b = originals[5].split("\n\n"), originals[6].split("\n\n")
    mixed = "\n\n".join(a[: len(a) // 2] + b[len(b) // 2 :])
    corpus = write_jsonl(tmp_path / "corpus" / "near.jsonl", [*originals, *edited.values(), mixed])

    datamodule = prepare(tmp_path, "data=jsonl", f"data.source={corpus}")
    report = datamodule.manifest["sources"]["corpus"]["report"]
    assert not removed(report, "removed.gopher"), report  # the edits pass the quality rules like their originals
    assert removed(report, "removed.dedup") == len(edited)
    documents = set(all_decoded(datamodule))
    assert len(documents) == len(originals) + 1
    assert mixed in documents
    for original, copy in edited.items():
        assert (original in documents) != (copy in documents)  # one of the pair, whichever was checked first
    assert set(originals[5:]) <= documents


# --- training on a new source --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["bert", "t5"])
def test_bert_and_t5_train_on_a_jsonl_source(
    model: str, jsonl_corpus: Path, jsonl_prepared: TokenDataModule, tmp_path: Path
) -> None:
    from lmpre.train import train

    prepared = jsonl_prepared.prepared_dir  # reused: same data settings as the module's preparation
    cfg = compose_config(
        "train",
        f"model={model}",
        "data=jsonl",
        f"data.source={jsonl_corpus}",
        VOCAB,
        f"data.cache_dir={prepared.parent / 'cache'}",
        f"data.output_dir={prepared}",
        *TINY,
        "trainer.max_steps=10",
        "trainer.val_check_interval=10",
        f"paths.output_dir={tmp_path}",
    )
    metrics = train(cfg)
    assert math.isfinite(metrics["val/loss"]), metrics
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
