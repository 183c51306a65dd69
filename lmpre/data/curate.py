"""The documents stage: a source read once, cleaned, held out, filtered and fingerprinted for deduplication in
worker processes, and written as one JSON line per document and split. Everything after it (deduplication,
tokenizer, shards) reads these files, never the raw ones.

When the tokenizer is known before the documents (a given one, not a BPE trained on them), the workers tokenize
the documents they keep too: tokenizing then runs in parallel with cleaning, not after it, and the shards are
copied from the stage's token files."""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import os
import signal
import sys
from collections import Counter, deque
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray
from rich.console import Console
from rich.progress import Progress, TextColumn, TimeElapsedColumn
from tokenizers import Tokenizer

from lmpre.data.dedup import MinHasher, exact_key
from lmpre.data.document import SPLITS, Document, holdout_split
from lmpre.data.filters import Filter, run_filters
from lmpre.data.shards import TokenizedDocument, encode_documents
from lmpre.data.sources import Source, WorkUnit
from lmpre.errors import DataError

BATCH_BYTES = 2**18  # text per task sent to a worker: amortises pickling; small, so no worker idles long at the end
EXAMPLE_CHARS = 500
EXAMPLES = 20  # removed documents kept per reason in a documents stage; a preparation writes up to this many


@dataclass
class Curation:
    """What happens to every document after its source read it."""

    filters: Sequence[Filter] = ()
    minhash: MinHasher | None = None  # signatures for near-duplicate removal; None: exact duplicates only
    dedup: bool = True  # compute the keys the deduplication pass needs
    tokenizer: Tokenizer | None = None  # tokenize the kept documents too (a tokenizer known in advance)

    def prepare(self) -> None:
        """What the steps build for every document, built once here, before the workers fork (`Filter.prepare`)."""
        for filter_ in self.filters:
            filter_.prepare()
        if self.minhash is not None:
            self.minhash.prepare()


@dataclass
class Kept:
    split: str
    id: str
    text: str
    exact: bytes | None
    signature: np.ndarray | None
    tokens: NDArray[np.integer] | None = None  # ended by <|endoftext|>


@dataclass
class BatchResult:
    kept: list[Kept] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    removed: list[tuple[str, str, str]] = field(default_factory=list)  # (reason, id, start of text)


def documents_path(stage_dir: Path, split: str) -> Path:
    return stage_dir / f"{split}.jsonl"


def read_documents(stage_dir: Path, split: str) -> Iterator[str]:
    """The texts of one split of a documents stage, in order."""
    with documents_path(stage_dir, split).open(encoding="utf-8") as file:
        for line in file:
            yield json.loads(line)["text"]


def signatures(stage_dir: Path, split: str, num_perm: int) -> np.ndarray:
    """The MinHash signatures of one split, row i for document i; memory-mapped, so they need no RAM."""
    path = stage_dir / f"{split}.minhash"
    if path.stat().st_size == 0:  # an empty file cannot be mapped
        return np.zeros((0, num_perm), np.uint32)
    return np.memmap(path, np.uint32, mode="r").reshape(-1, num_perm)


def has_tokens(stage_dir: Path) -> bool:
    """Whether the workers tokenized the documents of this stage."""
    return (stage_dir / "train.tokens").is_file()


def read_tokenized(stage_dir: Path, split: str, dtype: np.dtype) -> Iterator[TokenizedDocument]:
    """The tokens and UTF-8 bytes of each document of one split of a stage that `has_tokens`, in order. Read one
    document at a time, not memory-mapped: mapped pages would count in the process's memory as the corpus grows."""
    spans = np.fromfile(stage_dir / f"{split}.spans", np.int64).reshape(-1, 2)  # (tokens, bytes) per document
    with (stage_dir / f"{split}.tokens").open("rb") as file:
        for count, size in spans.tolist():
            yield np.fromfile(file, dtype, count), size


def exact_keys(stage_dir: Path, split: str) -> list[bytes]:
    data = (stage_dir / f"{split}.exact").read_bytes()
    return [data[i : i + 16] for i in range(0, len(data), 16)]


def curate(source: Source, curation: Curation, out: Path, workers: int, files: Collection[Path]) -> dict[str, Any]:
    """Write the documents stage of `files` of `source` into `out`; returns its report (counts per split and
    reason)."""
    stats: Counter[str] = Counter()
    removed: dict[str, list[dict[str, str]]] = {}
    texts: dict[str, IO[str]] = {}
    # Exact keys, signatures, (tokens, bytes) spans: fixed-size records, row i for document i; tokens: a stream.
    keys: dict[str, IO[bytes]] = {}
    suffixes = ["exact", "minhash", *(["tokens", "spans"] if curation.tokenizer else [])]
    with contextlib.ExitStack() as stack:
        for split in SPLITS:
            texts[split] = stack.enter_context(documents_path(out, split).open("w", encoding="utf-8"))
            for suffix in suffixes:
                keys[f"{split}.{suffix}"] = stack.enter_context((out / f"{split}.{suffix}").open("wb"))
        progress = stack.enter_context(_progress())
        task = progress.add_task(source.name, documents=0, mb=0.0, speed=0.0)
        units = [unit for unit in source.work_units() if Path(unit.path) in files]
        for result in _process(source, curation, units, workers, stats):
            stats.update(result.stats)
            elapsed = progress.tasks[0].elapsed or 1e-9
            megabytes = stats["read.bytes"] / 1e6
            progress.update(task, documents=stats["read.documents"], mb=megabytes, speed=megabytes / elapsed)
            for reason, id, text in result.removed:
                examples = removed.setdefault(reason, [])
                if len(examples) < EXAMPLES:
                    examples.append({"id": id, "text": text})
            for doc in result.kept:
                texts[doc.split].write(json.dumps({"id": doc.id, "text": doc.text}, ensure_ascii=False) + "\n")
                if doc.exact is not None:
                    keys[f"{doc.split}.exact"].write(doc.exact)
                if doc.signature is not None:
                    keys[f"{doc.split}.minhash"].write(doc.signature.astype(np.uint32).tobytes())
                if doc.tokens is not None:
                    keys[f"{doc.split}.tokens"].write(doc.tokens.tobytes())
                    spans = np.array([len(doc.tokens), len(doc.text.encode())], np.int64)
                    keys[f"{doc.split}.spans"].write(spans.tobytes())
    return {"counts": dict(sorted(stats.items())), "removed_examples": removed}


def check_kept(source: Source, counts: Counter[str]) -> None:
    """`counts`, of all the source's documents stages, keep some document; or a DataError that shows them."""
    if not any(counts[f"kept.{split}.documents"] for split in SPLITS):
        raise DataError(
            f"{source.setting} yields no document ({_summary(counts)}): point data.source at files with text, "
            "or relax the filters that removed everything (see the counts)."
        )


def _progress() -> Progress:
    """Documents, MB and MB/s read so far, on the terminal (nothing when output goes to a file)."""
    return Progress(
        TextColumn("preparing {task.description}:"),
        TextColumn("{task.fields[documents]:,} documents, {task.fields[mb]:,.1f} MB, {task.fields[speed]:.1f} MB/s"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not sys.stderr.isatty(),
    )


def _summary(stats: Counter[str]) -> str:
    parts = [f"{count:,} {reason}" for reason, count in sorted(stats.items()) if not reason.startswith("kept.")]
    return ", ".join(parts) or "no input"


def _process(
    source: Source, curation: Curation, units: list[WorkUnit], workers: int, stats: Counter[str]
) -> Iterator[BatchResult]:
    """Batches of the documents of `units` through `_curate_batch`, in order: in `workers` processes, or inline."""
    batches = _batches(source, units, stats)
    curation.prepare()
    if workers <= 1:
        _init_worker(source, curation)
        yield from map(_curate_batch, batches)
        return
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    pending: deque[Future[BatchResult]] = deque()
    try:
        with ProcessPoolExecutor(
            workers, context, initializer=_init_worker_process, initargs=(source, curation)
        ) as pool:
            for batch in batches:
                with _signals_held():  # a submit may fork the workers
                    pending.append(pool.submit(_curate_batch, batch))
                if len(pending) >= 2 * workers:  # bounded: memory does not grow with the corpus
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    except BrokenProcessPool as err:
        raise DataError(
            "A data-preparation worker process died. If you call lmpre from a script, put the call under "
            '`if __name__ == "__main__":` (worker processes import the script); otherwise it ran out of memory '
            "or was killed: see the messages above."
        ) from err


def _batches(source: Source, units: list[WorkUnit], stats: Counter[str]) -> Iterator[list[Document]]:
    batch: list[Document] = []
    size = 0
    for unit in units:
        for document in source.read(unit, stats):
            batch.append(document)
            size += len(document.text)
            if size >= BATCH_BYTES:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


_worker: tuple[Source, Curation] | None = None


def _init_worker(source: Source, curation: Curation) -> None:
    global _worker
    _worker = (source, curation)


def _init_worker_process(source: Source, curation: Curation) -> None:
    """A worker process dies with its parent (a killed preparation takes its workers with it) and leaves Ctrl-C to
    the parent, which stops the pool. Never called in the parent: that would ignore Ctrl-C there for good.
    The processes are the parallelism: the tokenizer's own threads would only compete with them."""
    _init_worker(source, curation)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)  # held by the parent while it forked this process


HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait while worker processes are forked, and are handled right after: a handler that raises
    inside fork() (in an at-fork callback) has its exception ignored, so a Ctrl-C at that instant was lost."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _curate_batch(documents: list[Document]) -> BatchResult:
    assert _worker is not None
    source, curation = _worker
    result = BatchResult()
    for raw in documents:
        result.stats["read.documents"] += 1
        result.stats["read.bytes"] += len(raw.text.encode())
        cleaned = source.clean(raw)
        if isinstance(cleaned, Document):
            cleaned = run_filters(curation.filters, cleaned)
        if isinstance(cleaned, str):
            result.stats[f"removed.{cleaned}"] += 1
            result.removed.append((cleaned, raw.id, raw.text[:EXAMPLE_CHARS]))
            continue
        text = cleaned.text
        # Held out by the cleaned text: copies that differ only in what cleaning removes land in one split.
        split = cleaned.split or holdout_split(text, source.val_fraction, source.test_fraction)
        result.stats[f"kept.{split}.documents"] += 1
        result.stats[f"kept.{split}.bytes"] += len(text.encode())
        exact = exact_key(text) if curation.dedup else None
        signature = curation.minhash.signature(text) if curation.dedup and curation.minhash else None
        result.kept.append(Kept(split, cleaned.id, text, exact, signature))
    if curation.tokenizer is not None:
        encoded = encode_documents([doc.text for doc in result.kept], curation.tokenizer)
        for doc, tokens in zip(result.kept, encoded, strict=True):
            doc.tokens = tokens
    return result
