"""Prepare data once: sources -> documents stages (read, clean, filter) -> deduplication -> tokenizer -> token
shards -> prepared directory (manifest). Each stage is a directory under its own key, so a changed setting or
file rebuilds only what it affects, and every complete directory is immutable: a rebuild goes to a new one.

What each stage's key covers, so that changing one split's files leaves the other splits' work alone:
- documents: the source's settings, the cleaning, and the files of one split (when the files say the split,
  as WikiText's do) or of all splits (when documents are held out by hash);
- tokenizer: its settings and, when trained, the train documents that survive deduplication;
- shards of a source's split: the documents stage, which of its documents survive deduplication, the tokenizer.
The prepared directory hard-links (or, across filesystems, copies) the tokenizer and shards it names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import compress
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from tokenizers import Tokenizer

from lmpre import __version__
from lmpre.data.cache import build_once, describe, describe_files, key_of, sha256_file
from lmpre.data.curate import (
    EXAMPLE_CHARS,
    EXAMPLES,
    Curation,
    check_kept,
    curate,
    exact_keys,
    has_tokens,
    read_documents,
    read_tokenized,
    signatures,
)
from lmpre.data.dedup import Deduplication
from lmpre.data.document import SPLITS
from lmpre.data.filters import Filter
from lmpre.data.remote import check_prefix, is_remote, publish
from lmpre.data.shards import CHUNK_TOKENS, TokenizedDocument, token_dtype, tokenize, write_token_shards
from lmpre.data.sources import Source
from lmpre.data.tokenizer import TokenizerSpec, build_tokenizer, special_token_ids
from lmpre.errors import DataError

log = logging.getLogger(__name__)

# Bump when the prepared bytes change for unchanged settings (cleaning, layout): forces a rebuild.
PIPELINE_VERSION = 3
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
STAGE = "stage.json"  # written last into a documents stage: its report, and the mark that it is complete
SHARDS = "shards.json"  # written last into a shards directory: what it holds, and the mark that it is complete


Stages = dict[str, dict[str, Path | None]]  # source -> split -> the documents stage holding it (None: no files)
Masks = dict[str, dict[str, np.ndarray]]  # source -> split -> which documents are kept


@dataclass
class DataRecipe:
    """Everything that decides the prepared data."""

    sources: Mapping[str, Source]
    filters: Sequence[Filter] = ()
    dedup: Deduplication | None = None
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    removed_examples: int = 0  # removed documents written per source and reason to removed.jsonl, for auditing

    def __post_init__(self) -> None:
        for name, source in self.sources.items():
            source.name = name  # its key in data.sources: names its stage, its shards and its settings in errors

    def check(self) -> None:
        """Every setting that cannot work, before any expensive work."""
        if not self.sources:
            raise DataError("data.sources is empty: name at least one source (see conf/source/).")
        for source in self.sources.values():
            source.check()
        self.tokenizer.check()

    def curation(self) -> Curation:
        """What the workers do to each document; they tokenize it too when the tokenizer is not trained on them."""
        minhash = self.dedup.minhasher() if self.dedup else None
        tokenizer = build_tokenizer(self.tokenizer, ()) if self.tokenizer.kind != "bpe" else None
        return Curation(self.filters, minhash, dedup=self.dedup is not None, tokenizer=tokenizer)


def prepare_dataset(
    recipe: DataRecipe, cache_dir: Path, output_dir: Path | str | None = None, workers: int | None = None
) -> Path:
    """Return a directory with complete prepared data for `recipe`, building only what is not there yet.

    Without `output_dir` it is `cache_dir/prepared/<key>`, the key covering every setting and the content of
    every source file. Safe to call from several processes (DDP ranks): one builds, the others wait and reuse.
    An `output_dir` in object storage (s3://…) gets a copy of that directory, which training streams.
    """
    recipe.check()
    remote = str(output_dir) if is_remote(output_dir) else None
    if remote:
        check_prefix(remote)  # a bucket or prefix that cannot receive the data fails before any work
        output_dir = None
    workers = workers or os.cpu_count() or 1
    stages = {name: _documents_stages(source, recipe, cache_dir, workers) for name, source in recipe.sources.items()}
    settings = {
        "pipeline_version": PIPELINE_VERSION,
        "documents": {
            name: {split: stage.name if stage else None for split, stage in by_split.items()}
            for name, by_split in stages.items()
        },
        "dedup": describe(recipe.dedup) if recipe.dedup else None,
        "tokenizer": _describe_tokenizer(recipe.tokenizer),
        "removed_examples": recipe.removed_examples,
    }
    key = key_of(settings)
    target = Path(output_dir).expanduser().resolve() if output_dir else cache_dir / "prepared" / key
    if output_dir:
        _check_output_dir(target, key, settings)

    def build(out: Path) -> None:
        _build(out, recipe, stages, cache_dir, key, settings)

    built = build_once(target, cache_dir / "locks", lambda path: _manifest_key(path) == key, build)
    log.info("%s prepared data at %s", "built" if built else "reusing", target)
    if remote:
        with FileLock(cache_dir / "locks" / f"{key_of(remote)}.lock"):
            uploaded = publish(target, remote, key)
        log.info("%s prepared data at %s", "uploaded" if uploaded else "reusing", remote)
    return target


def read_manifest(prepared_dir: Path) -> dict[str, Any] | None:
    """The manifest of a prepared directory, or None when there is none that lmpre wrote."""
    try:
        manifest = json.loads((prepared_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == "lmpre.prepared" else None


def _manifest_key(prepared_dir: Path) -> str | None:
    manifest = read_manifest(prepared_dir)
    return manifest["key"] if manifest else None


def _check_output_dir(target: Path, key: str, settings: dict[str, Any]) -> None:
    """Never delete or overwrite what lmpre did not write, nor a complete preparation of other settings."""
    if target.exists() and not target.is_dir():
        raise DataError(f"data.output_dir={target} is a file: choose a directory (new or empty).")
    if not target.is_dir() or not any(target.iterdir()):
        return
    manifest = read_manifest(target)
    if manifest is None:
        raise DataError(
            f"data.output_dir={target} is not empty and holds no lmpre manifest: lmpre writes only into a new or "
            "empty directory, or one it prepared. Choose another data.output_dir."
        )
    if manifest["key"] != key:
        differing = sorted(k for k in settings if manifest.get("settings", {}).get(k) != settings[k])
        raise DataError(
            f"data.output_dir={target} holds data prepared from other settings or source files (differing: "
            f"{', '.join(differing)}). A prepared directory is never rebuilt in place (a training may be reading "
            "it): choose another data.output_dir, or delete this one."
        )


def _describe_tokenizer(spec: TokenizerSpec) -> dict[str, Any]:
    described = asdict(spec)
    if spec.kind == "file":
        described["sha256"] = sha256_file(Path(str(spec.path)).expanduser())
    return described


def _documents_stages(source: Source, recipe: DataRecipe, cache_dir: Path, workers: int) -> dict[str, Path | None]:
    """The documents stages of one source: one per split where its files say the split (a changed test file then
    leaves the train and val stages alone), else one for every split; None for a split without files."""
    by_split: dict[str, Path | None] = dict.fromkeys(SPLITS)
    for group, files in source.split_files().items():
        if files:
            stage = _documents_stage(source, recipe, cache_dir, workers, group, files)
            by_split.update(dict.fromkeys([group] if group else SPLITS, stage))
    check_kept(source, _stage_report(by_split)["counts"])
    return by_split


def _documents_stage(
    source: Source, recipe: DataRecipe, cache_dir: Path, workers: int, group: str, files: list[Path]
) -> Path:
    """The documents of `files` of one source (the split `group`, or every split when ""), built once per source,
    settings and file contents: every preparation and mixture that names the same source reuses them (with a given
    tokenizer, every one with that tokenizer)."""
    curation = recipe.curation()
    settings = {
        "source": source.settings(),
        "split": group or None,
        "files": describe_files(files),
        "filters": [describe(f) for f in curation.filters],
        "minhash": describe(curation.minhash) if curation.minhash else None,
        "dedup": curation.dedup,
        "tokenizer": _describe_tokenizer(recipe.tokenizer) if curation.tokenizer else None,
        "pipeline_version": PIPELINE_VERSION,
    }
    stage = cache_dir / "documents" / "-".join(filter(None, (source.name, group, key_of(settings))))

    def build(out: Path) -> None:
        report = curate(source, curation, out, workers, set(files))
        (out / STAGE).write_text(json.dumps({"settings": settings, **report}, indent=1))

    build_once(stage, cache_dir / "locks", lambda path: (path / STAGE).is_file(), build)
    return stage


def _stage_report(by_split: dict[str, Path | None]) -> dict[str, Any]:
    """The reports of a source's documents stages as one: counts summed, examples and files joined."""
    counts: Counter[str] = Counter()
    examples: dict[str, list[dict[str, str]]] = {}
    files: list[dict[str, Any]] = []
    for stage in dict.fromkeys(stage for stage in by_split.values() if stage):
        report = json.loads((stage / STAGE).read_text())
        counts.update(report["counts"])
        for reason, removed in report["removed_examples"].items():
            examples.setdefault(reason, []).extend(removed[: EXAMPLES - len(examples.get(reason, []))])
        files += report["settings"]["files"]
    return {"counts": counts, "removed_examples": examples, "files": files}


def _build(out: Path, recipe: DataRecipe, stages: Stages, cache_dir: Path, key: str, settings: dict[str, Any]) -> None:
    """Link tokenizer and shards (building those not in the cache yet) and write (last) the manifest into the empty
    directory `out`."""
    reports = {name: _stage_report(by_split) for name, by_split in stages.items()}
    keep, dropped = _deduplicate(stages, reports, recipe.dedup)
    tokenizer_dir = _tokenizer_stage(recipe, stages, keep, cache_dir)
    link_tree(tokenizer_dir, out)
    tokenizer = Tokenizer.from_file(str(out / TOKENIZER))
    sources: dict[str, Any] = {}
    for name, by_split in stages.items():
        counts = reports[name]["counts"]
        splits, shard_dirs = {}, {}
        for split, stage in by_split.items():
            mask = keep[name][split]
            shard_dirs[split] = _shards_stage(name, split, stage, mask, tokenizer, tokenizer_dir, cache_dir)
            link_tree(shard_dirs[split], out / name / split, but=SHARDS)
            splits[split] = json.loads((shard_dirs[split] / SHARDS).read_text())
            counts[f"removed.dedup.{split}"] = int((~mask).sum())
            if stage is not None:
                _add_examples(reports[name]["removed_examples"], stage, split, dropped.get(name, {}).get(split, {}))
        sources[name] = {
            "documents_stages": {split: str(stage) if stage else None for split, stage in by_split.items()},
            "shards": {split: str(path) for split, path in shard_dirs.items()},
            "weight": recipe.sources[name].weight,
            "files": reports[name]["files"],
            "report": dict(sorted(counts.items())),
            "splits": splits,
        }
    _write_removed_examples(out, reports, recipe.removed_examples)
    manifest = {
        "format": "lmpre.prepared",
        "key": key,
        "settings": settings,
        "lmpre_version": __version__,
        "sources": sources,
        "splits": {
            split: {
                stat: sum(s["splits"][split][stat] for s in sources.values())
                for stat in ("documents", "bytes", "tokens")
            }
            for split in SPLITS
        },
        "tokenizer": {
            "sha256": sha256_file(out / TOKENIZER),
            "vocab_size": tokenizer.get_vocab_size(),
            "special_tokens": special_token_ids(tokenizer),
        },
        "dtype": token_dtype(tokenizer.get_vocab_size()).name,
        "chunk_tokens": CHUNK_TOKENS,
    }
    for split in ("train", "val"):
        if sum(facts["splits"][split]["tokens"] for facts in sources.values()) == 0:
            raise DataError(
                f"The {split} split is empty after cleaning and deduplication: add text, raise the sources' "
                "val_fraction, or relax the filters (counts: python -m lmpre.prepare prints them)."
            )
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _tokenizer_stage(recipe: DataRecipe, stages: Stages, keep: Masks, cache_dir: Path) -> Path:
    """The tokenizer, built once per its settings and, when trained, the train documents it learns from: a new
    val or test file that drops no train document reuses it."""
    settings: dict[str, Any] = {
        "tokenizer": _describe_tokenizer(recipe.tokenizer),
        "pipeline_version": PIPELINE_VERSION,
    }
    if recipe.tokenizer.kind == "bpe":
        settings["train"] = {
            name: {
                "documents": stage.name if (stage := by_split["train"]) else None,
                "kept": mask_digest(keep[name]["train"]),
                "weight": recipe.sources[name].weight,  # each source's share of the sample
            }
            for name, by_split in stages.items()
        }
    target = cache_dir / "tokenizers" / key_of(settings)

    def build(out: Path) -> None:
        build_tokenizer(recipe.tokenizer, _train_sample(stages, keep, recipe)).save(str(out / TOKENIZER))

    build_once(target, cache_dir / "locks", lambda path: (path / TOKENIZER).is_file(), build)
    return target


def _shards_stage(
    name: str,
    split: str,
    stage: Path | None,
    mask: np.ndarray,
    tokenizer: Tokenizer,
    tokenizer_dir: Path,
    cache_dir: Path,
) -> Path:
    """The token shards of one split of one source, built once per its documents stage, the documents of it that
    survive deduplication and the tokenizer: a changed test file reuses train's shards unless deduplication
    against it drops a train document."""
    settings = {
        "documents": stage.name if stage else None,
        "split": split,
        "kept": mask_digest(mask),
        "tokenizer": sha256_file(tokenizer_dir / TOKENIZER),
        "pipeline_version": PIPELINE_VERSION,
    }
    target = cache_dir / "shards" / f"{name}-{split}-{key_of(settings)}"

    def build(out: Path) -> None:
        if stage is None:
            documents: Iterator[TokenizedDocument] = iter(())
        elif has_tokens(stage):  # tokenized by the workers, with this tokenizer (it is in the stage's key)
            documents = compress(read_tokenized(stage, split, token_dtype(tokenizer.get_vocab_size())), mask)
        else:
            documents = tokenize(compress(read_documents(stage, split), mask), tokenizer)
        (out / SHARDS).write_text(json.dumps(write_token_shards(documents, out)))

    build_once(target, cache_dir / "locks", lambda path: (path / SHARDS).is_file(), build)
    return target


def mask_digest(mask: np.ndarray) -> str:
    """A short hash of which documents survive: part of the keys of what is built from them."""
    data = len(mask).to_bytes(8, "little") + np.packbits(mask).tobytes()
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def link_tree(source: Path, target: Path, but: str = "") -> None:
    """Hard links in `target` to the files of `source` (but the one named `but`): the prepared directory costs no
    space and never changes the cached files, which are never rewritten either. Copies across filesystems."""
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.name != but:
            try:
                os.link(path, target / path.name)
            except OSError:
                shutil.copy2(path, target / path.name)


def _deduplicate(
    stages: Stages, reports: dict[str, dict[str, Any]], dedup: Deduplication | None
) -> tuple[Masks, dict[str, dict[str, dict[int, str]]]]:
    """Which documents survive deduplication across every source and split, and why the others were dropped
    (source -> split -> document index -> reason). Val and test documents enter the index first, so a train
    document that repeats one of them is dropped from train (validation then never measures memorisation)."""
    keep = {
        name: {split: np.ones(report["counts"].get(f"kept.{split}.documents", 0), dtype=bool) for split in SPLITS}
        for name, report in reports.items()
    }
    if dedup is None:
        return keep, {}
    reasons: dict[str, dict[str, dict[int, str]]] = {name: {split: {} for split in SPLITS} for name in stages}
    index = dedup.index()
    for split in ("val", "test", "train"):
        for name, by_split in stages.items():
            if (stage := by_split[split]) is None:
                continue
            sigs = signatures(stage, split, dedup.num_perm) if dedup.near else None
            for i, exact in enumerate(exact_keys(stage, split)):
                if reason := index.check(exact, sigs[i] if sigs is not None else None):
                    keep[name][split][i] = False
                    reasons[name][split][i] = reason
    return keep, reasons


def _train_sample(stages: Stages, keep: Masks, recipe: DataRecipe) -> Iterator[str]:
    """Kept train documents of every source, each source's share of the tokenizer sample in proportion to its
    weight, so the vocabulary fits the mixture that is trained on."""
    total = sum(source.weight for source in recipe.sources.values())
    for name, by_split in stages.items():
        if (stage := by_split["train"]) is None:
            continue
        budget = recipe.tokenizer.sample_bytes * recipe.sources[name].weight / total
        used = 0
        for text, kept in zip(read_documents(stage, "train"), keep[name]["train"], strict=True):
            if kept:
                yield text
                used += len(text.encode())
                if used >= budget:
                    break


def _add_examples(examples: dict[str, list[dict[str, str]]], stage: Path, split: str, dropped: dict[int, str]) -> None:
    """The first documents deduplication dropped, beside the filters' examples in the report."""
    wanted = dict(list(dropped.items())[:EXAMPLES])
    if not wanted:
        return
    for i, text in enumerate(read_documents(stage, split)):
        if i in wanted:
            examples.setdefault(f"{wanted[i]}.{split}", []).append({"id": f"{split}:{i}", "text": text[:EXAMPLE_CHARS]})
        if i >= max(wanted):
            return


def _write_removed_examples(out: Path, reports: dict[str, dict[str, Any]], per_reason: int) -> None:
    with (out / "removed.jsonl").open("w", encoding="utf-8") as file:
        for name, report in reports.items():
            for reason, examples in report["removed_examples"].items():
                for example in examples[:per_reason]:
                    file.write(json.dumps({"source": name, "reason": reason, **example}, ensure_ascii=False) + "\n")
