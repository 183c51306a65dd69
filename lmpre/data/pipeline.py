"""Prepare a dataset once: raw splits -> documents -> tokenizer -> token shards + manifest, reused across runs."""

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from lmpre import __version__
from lmpre.data.documents import FORMATS, TextSpan, read_documents, split_spans
from lmpre.data.shards import CHUNK_TOKENS, token_dtype, write_token_shards
from lmpre.data.sources.wikitext import PREPARED_SPLITS, download_wikitext, resolve_split_files
from lmpre.data.tokenizer import MIN_VOCAB_SIZE, special_token_ids, train_tokenizer
from lmpre.errors import DataError

log = logging.getLogger(__name__)

# Bump when the prepared bytes change for an unchanged config (cleaning, tokenizer, layout): forces a rebuild.
PIPELINE_VERSION = 1
SPAN_BYTES = 8 * 2**20  # raw text per tokenization task: bounds worker memory on large files
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
_PREPARED_NAMES = {*PREPARED_SPLITS, TOKENIZER, MANIFEST}


@dataclass(frozen=True)
class DataConfig:
    """The settings that determine prepared data: equal configs share one prepared directory."""

    source: str | None  # a directory, or None for the Hub
    splits: dict[str, str]
    format: str
    vocab_size: int
    hub_repo: str
    hub_config: str

    def __post_init__(self) -> None:
        # One spelling per directory (relative, ~, symlinks): the key and the manifest compare paths as text.
        if self.source:
            object.__setattr__(self, "source", str(Path(self.source).expanduser().resolve()))

    def fingerprint(self) -> dict[str, Any]:
        return {**asdict(self), "pipeline_version": PIPELINE_VERSION}

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.fingerprint(), sort_keys=True).encode()).hexdigest()[:16]


def prepare_dataset(config: DataConfig, cache_dir: Path, output_dir: Path | None = None) -> Path:
    """Return a directory with complete prepared data for `config`, building it only when none is there.

    Without `output_dir` it is `cache_dir/prepared/<config key>`. Safe to call from several processes (DDP
    ranks): the first builds under a file lock, the others wait and reuse. Tokenization runs in worker
    processes that import `__main__`: call this from a script under `if __name__ == "__main__":`.
    """
    if config.format not in FORMATS:
        raise DataError(f"data.format={config.format} is not one of {', '.join(FORMATS)}.")
    if config.vocab_size < MIN_VOCAB_SIZE:
        raise DataError(
            f"data.vocab_size={config.vocab_size} is too small: byte-level BPE needs at least {MIN_VOCAB_SIZE} "
            "(its 256 byte tokens plus the special tokens)."
        )
    target = output_dir.resolve() if output_dir else cache_dir / "prepared" / config.key()
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(f"{target.name}.lock")):
        if config.source:
            source = Path(config.source)
        else:
            source = download_wikitext(config.hub_repo, config.hub_config, cache_dir)
        files = resolve_split_files(source, config.splits)
        if _is_reusable(target, config, files):
            log.info("reusing prepared data at %s", target)
            return target
        for stale in target.parent.glob(f"{target.name}.partial-*"):  # left by an interrupted build
            shutil.rmtree(stale)
        partial = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
        _build(partial, config, files)
        if target.exists():
            shutil.rmtree(target)
        partial.replace(target)
        log.info("prepared data at %s", target)
    return target


def read_manifest(prepared_dir: Path) -> dict[str, Any] | None:
    """The manifest of a prepared directory, or None when the directory is missing or incomplete."""
    path = prepared_dir / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def _build(out: Path, config: DataConfig, files: dict[str, list[Path]]) -> None:
    """Write tokenizer, shards and (last) the manifest of `config` into the empty directory `out`."""
    spans = {
        split: [span for path in files[split] for span in split_spans(path, config.format, SPAN_BYTES)]
        for split in PREPARED_SPLITS
    }
    counts = {split: _count_documents(spans[split], config.format, files[split]) for split in PREPARED_SPLITS}
    tokenizer = train_tokenizer(_documents(spans["train"], config.format), config.vocab_size)
    tokenizer.save(str(out / TOKENIZER))
    dtype = token_dtype(tokenizer.get_vocab_size())
    splits = {}
    for split in PREPARED_SPLITS:
        tokens = write_token_shards(spans[split], out / split, out / TOKENIZER, config.format, dtype)
        if tokens < counts[split]["documents"]:  # every document ends with end-of-text
            raise RuntimeError(f"litdata wrote {tokens} tokens for the {split} split: its worker failed, see above")
        splits[split] = {"files": [_describe_file(path) for path in files[split]], **counts[split], "tokens": tokens}
    manifest = {
        "config": config.fingerprint(),
        "lmpre_version": __version__,
        "splits": splits,
        "tokenizer": {
            "sha256": _sha256(out / TOKENIZER),
            "vocab_size": tokenizer.get_vocab_size(),
            "special_tokens": special_token_ids(tokenizer),
        },
        "dtype": dtype.name,
        "chunk_tokens": CHUNK_TOKENS,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _is_reusable(target: Path, config: DataConfig, files: dict[str, list[Path]]) -> bool:
    """True when `target` holds complete data of `config` built from source files of the same sizes."""
    manifest = read_manifest(target)
    if manifest is None:
        if target.exists() and not {path.name for path in target.iterdir()} <= _PREPARED_NAMES:
            raise DataError(f"{target} holds other files than prepared data: choose another data.output_dir.")
        return False
    fingerprint = config.fingerprint()
    if manifest["config"] != fingerprint:
        differing = sorted(key for key in fingerprint if manifest["config"].get(key) != fingerprint[key])
        raise DataError(
            f"{target} holds data prepared with a different config ({', '.join(differing)} differ): "
            "delete it or choose another data.output_dir."
        )
    recorded = [(f["path"], f["size"]) for split in PREPARED_SPLITS for f in manifest["splits"][split]["files"]]
    current = [(str(path), path.stat().st_size) for split in PREPARED_SPLITS for path in files[split]]
    if recorded != current:
        log.info("source files changed since %s was prepared: rebuilding it", target)
        return False
    return True


def _documents(spans: list[TextSpan], format: str) -> Iterator[str]:
    return (document for span in spans for document in read_documents(span, format))


def _count_documents(spans: list[TextSpan], format: str, files: list[Path]) -> dict[str, int]:
    """Documents and UTF-8 bytes of cleaned text (the denominator of bits per byte); an empty split is an error."""
    documents = num_bytes = 0
    for document in _documents(spans, format):
        documents += 1
        num_bytes += len(document.encode())
    if documents == 0:
        names = ", ".join(map(str, files))
        raise DataError(f"No text in {names}: point data.source or data.splits at files with text.")
    return {"documents": documents, "bytes": num_bytes}


def _describe_file(path: Path) -> dict[str, Any]:
    return {"path": str(path), "size": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(2**20):
            digest.update(block)
    return digest.hexdigest()
