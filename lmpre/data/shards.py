"""Documents -> one packed stream of token ids, written as litdata chunks that TokensLoader reads as windows."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

import numpy as np
from litdata import TokensLoader
from litdata.streaming.writer import BinaryWriter
from litdata.utilities.env import _DistributedEnv
from numpy.typing import NDArray
from tokenizers import Tokenizer

from lmpre.data.tokenizer import special_token_ids

# Tokens per chunk. TokensLoader cuts non-overlapping windows inside each chunk and drops the chunk's tail,
# so every chunk loses fewer than `window` tokens: under 0.05% for windows up to 1024.
CHUNK_TOKENS = 2**21
ENCODE_BATCH = 512  # documents per encode_batch call: the tokenizer spreads each batch over every core

TokenizedDocument = tuple[NDArray[np.integer], int]  # its token ids ended by <|endoftext|>, its UTF-8 bytes


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every id: uint16 halves disk and page cache for vocabularies up to 65536."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.int32)


def encode_documents(texts: Sequence[str], tokenizer: Tokenizer) -> list[NDArray[np.integer]]:
    """The token ids of each text, ended by <|endoftext|>, in the shards' dtype: one `encode_batch_fast` call
    (no offsets) and one array for the whole batch, cut into views, rather than an array per document."""
    if not texts:
        return []
    eot = special_token_ids(tokenizer)["eot"]
    ids = [encoding.ids for encoding in tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]
    ends = np.cumsum([len(document) + 1 for document in ids])
    stream = np.full(int(ends[-1]), eot, token_dtype(tokenizer.get_vocab_size()))
    for document, end in zip(ids, ends, strict=True):
        stream[end - 1 - len(document) : end - 1] = document
    return np.split(stream, ends[:-1])


def tokenize(texts: Iterable[str], tokenizer: Tokenizer) -> Iterator[TokenizedDocument]:
    """`texts` tokenized in batches of ENCODE_BATCH, in order."""
    iterator = iter(texts)
    while batch := list(islice(iterator, ENCODE_BATCH)):
        for text, tokens in zip(batch, encode_documents(batch, tokenizer), strict=True):
            yield tokens, len(text.encode())


def write_token_shards(documents: Iterable[TokenizedDocument], out_dir: Path) -> dict[str, int]:
    """Write the tokenized `documents` in order into litdata chunks under `out_dir`; returns the documents, UTF-8
    bytes (the denominator of bits per byte) and tokens written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = BinaryWriter(str(out_dir), chunk_size=CHUNK_TOKENS, item_loader=TokensLoader())
    # One writer in one process, even when DDP ranks exist (prepare_data runs on one of them): otherwise the
    # writer takes the process group's world size and waits forever for the other ranks' index files.
    writer._distributed_env = _DistributedEnv(world_size=1, global_rank=0, num_nodes=1)
    index = num_bytes = 0
    for tokens, size in documents:
        writer.add_item(index, tokens)
        index += 1
        num_bytes += size
    if index == 0:
        return {"documents": 0, "bytes": 0, "tokens": 0}
    writer.done()
    writer.merge(1)
    chunks = json.loads((out_dir / "index.json").read_text())["chunks"]
    return {"documents": index, "bytes": num_bytes, "tokens": sum(int(chunk["dim"]) for chunk in chunks)}
