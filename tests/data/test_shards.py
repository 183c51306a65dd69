import json
from itertools import compress
from pathlib import Path

import numpy as np
import pytest
from litdata import StreamingDataset, TokensLoader
from tokenizers import Tokenizer

from lmpre.data import read_manifest
from lmpre.data import shards as shards_module
from lmpre.data.curate import read_documents
from lmpre.data.pipeline import TOKENIZER
from lmpre.data.shards import encode_documents, tokenize, write_token_shards


def encoded_stream(tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    """The token stream the shards should hold: every document, in order, each ended by end-of-text."""
    return np.concatenate([[*encoding.ids, 0] for encoding in tokenizer.encode_batch(texts)])


def test_shards_hold_every_kept_document_then_end_of_text(prepared_wikitext: Path) -> None:
    manifest = read_manifest(prepared_wikitext)
    stage = Path(manifest["sources"]["corpus"]["documents_stages"]["val"])
    tokenizer = Tokenizer.from_file(str(prepared_wikitext / TOKENIZER))
    expected = encoded_stream(tokenizer, list(read_documents(stage, "val")))
    window = 1000
    dataset = StreamingDataset(str(prepared_wikitext / "corpus" / "val"), item_loader=TokensLoader(block_size=window))
    stream = np.concatenate([dataset[i] for i in range(len(dataset))])
    assert dataset[0].dtype == np.uint16
    assert len(dataset) == len(expected) // window  # one chunk: only its tail (< window) is not read
    np.testing.assert_array_equal(stream, expected[: len(stream)])


def test_windows_stay_inside_chunks_and_each_chunk_drops_its_tail(
    prepared_wikitext: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shards_module, "CHUNK_TOKENS", 5_000)  # several chunks
    stage = Path(read_manifest(prepared_wikitext)["sources"]["corpus"]["documents_stages"]["val"])
    tokenizer = Tokenizer.from_file(str(prepared_wikitext / TOKENIZER))
    texts = list(read_documents(stage, "val"))
    keep = [i % 3 != 1 for i in range(len(texts))]  # deduplication's mask: the dropped ones are not written
    written = write_token_shards(tokenize(compress(texts, keep), tokenizer), tmp_path / "val")
    expected = encoded_stream(tokenizer, [text for text, kept in zip(texts, keep, strict=True) if kept])
    assert written == {
        "documents": sum(keep),
        "bytes": sum(len(t.encode()) for t, k in zip(texts, keep, strict=True) if k),
        "tokens": len(expected),
    }
    dims = [chunk["dim"] for chunk in json.loads((tmp_path / "val" / "index.json").read_text())["chunks"]]
    assert len(dims) > 1
    assert sum(dims) == len(expected)

    window = 300
    starts = np.cumsum([0, *dims[:-1]])
    windows = [
        expected[start + i * window :][:window]
        for start, dim in zip(starts, dims, strict=True)
        for i in range(dim // window)
    ]
    dataset = StreamingDataset(str(tmp_path / "val"), item_loader=TokensLoader(block_size=window))
    assert len(dataset) == len(windows)
    for i, want in enumerate(windows):
        np.testing.assert_array_equal(dataset[i], want)


def test_a_batch_is_encoded_as_each_document_alone(prepared_wikitext: Path) -> None:
    stage = Path(read_manifest(prepared_wikitext)["sources"]["corpus"]["documents_stages"]["val"])
    tokenizer = Tokenizer.from_file(str(prepared_wikitext / TOKENIZER))
    texts = [*list(read_documents(stage, "val"))[:3], ""]
    encoded = encode_documents(texts, tokenizer)
    assert [tokens.dtype for tokens in encoded] == [np.dtype(np.uint16)] * 4
    for text, tokens in zip(texts, encoded, strict=True):
        assert tokens.tolist() == [*tokenizer.encode(text, add_special_tokens=False).ids, 0]
    assert encode_documents([], tokenizer) == []
