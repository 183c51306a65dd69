"""Preparation end to end on real text: what the manifest says, what is reused, what is never touched."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from lmpre.data import DataRecipe, TokenizerSpec, prepare_dataset, read_manifest
from lmpre.data import pipeline as pipeline_module
from lmpre.data.cache import sha256_file
from lmpre.data.curate import has_tokens, read_documents
from lmpre.data.dedup import Deduplication
from lmpre.data.filters import Normalize
from lmpre.data.pipeline import MANIFEST, STAGE, TOKENIZER
from lmpre.data.sources.base import open_binary
from lmpre.data.sources.wikitext import WikiText
from lmpre.errors import DataError


@pytest.fixture
def raw_articles(wikitext_raw: Path) -> list[str]:
    """The raw_articles of the bundled wiki.valid.raw, as raw text."""
    lines = open_binary(wikitext_raw / "wiki.valid.raw.xz").read().decode().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith(" = ") and not line.startswith(" = =")]
    return ["".join(lines[a:b]) for a, b in zip(starts, [*starts[1:], len(lines)], strict=True)]


@pytest.fixture
def recipe(raw_articles: list[str], tmp_path: Path) -> DataRecipe:
    """Twelve real raw_articles in a writable directory, held out by hash, with a 400-token BPE."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "wiki.small.raw").write_text("".join(raw_articles[:12]))
    return DataRecipe(
        sources={"wiki": WikiText(str(source), val_fraction=0.25, test_fraction=0.1)},
        filters=[Normalize()],
        dedup=Deduplication(),
        tokenizer=TokenizerSpec(vocab_size=400),
    )


def test_manifest_matches_documents_shards_and_tokenizer(prepared_wikitext: Path) -> None:
    manifest = read_manifest(prepared_wikitext)
    assert manifest is not None
    assert manifest["dtype"] == "uint16"
    assert manifest["tokenizer"]["vocab_size"] == 512
    assert manifest["tokenizer"]["sha256"] == sha256_file(prepared_wikitext / TOKENIZER)
    facts = manifest["sources"]["corpus"]
    assert [Path(f["path"]).name for f in facts["files"]] == ["wiki.test.raw.xz", "wiki.valid.raw.xz"]
    report = facts["report"]
    kept = sum(facts["splits"][split]["documents"] for split in ("train", "val", "test"))
    removed = sum(count for reason, count in report.items() if reason.startswith("removed."))
    assert report["read.documents"] == kept + removed == 122
    for split in ("train", "val", "test"):
        stats = facts["splits"][split]
        chunks = json.loads((prepared_wikitext / "corpus" / split / "index.json").read_text())["chunks"]
        assert stats["tokens"] == sum(chunk["dim"] for chunk in chunks)
        assert 1.5 < stats["bytes"] / stats["tokens"] < 3  # 409 merges on English
        assert manifest["splits"][split] == stats  # one source: its splits are the totals


def test_same_recipe_reuses_and_a_new_vocabulary_reuses_the_documents(recipe: DataRecipe, tmp_path: Path) -> None:
    first = prepare_dataset(recipe, tmp_path / "cache")
    built_at = (first / MANIFEST).stat().st_mtime_ns
    assert prepare_dataset(recipe, tmp_path / "cache") == first
    assert (first / MANIFEST).stat().st_mtime_ns == built_at

    [stage] = (tmp_path / "cache" / "documents").iterdir()
    staged_at = (stage / STAGE).stat().st_mtime_ns
    other = prepare_dataset(replace(recipe, tokenizer=TokenizerSpec(vocab_size=380)), tmp_path / "cache")
    assert other != first
    assert read_manifest(other)["tokenizer"]["vocab_size"] == 380
    assert (stage / STAGE).stat().st_mtime_ns == staged_at  # the documents stage was reused, not rebuilt
    assert (first / MANIFEST).stat().st_mtime_ns == built_at


def test_a_given_tokenizer_tokenizes_in_the_workers_and_writes_the_same_shards(
    recipe: DataRecipe, tmp_path: Path
) -> None:
    trained = prepare_dataset(recipe, tmp_path / "cache")
    given = replace(recipe, tokenizer=TokenizerSpec(kind="file", path=str(trained / TOKENIZER)))
    for workers in (1, 2):
        prepared = prepare_dataset(given, tmp_path / f"given-{workers}", workers=workers)
        stage = Path(read_manifest(prepared)["sources"]["wiki"]["documents_stages"]["train"])
        assert has_tokens(stage)
        for split in ("train", "val", "test"):
            for chunk in (trained / "wiki" / split).glob("*.bin"):
                assert (prepared / "wiki" / split / chunk.name).read_bytes() == chunk.read_bytes()
            assert read_manifest(prepared)["splits"][split] == read_manifest(trained)["splits"][split]
    assert not has_tokens(Path(read_manifest(trained)["sources"]["wiki"]["documents_stages"]["train"]))


@pytest.fixture
def split_files_recipe(raw_articles: list[str], tmp_path: Path) -> DataRecipe:
    """Real articles in WikiText's own train, valid and test files."""
    source = tmp_path / "splits"
    source.mkdir()
    for name, articles in (("train", raw_articles[:8]), ("valid", raw_articles[8:11]), ("test", raw_articles[11:13])):
        (source / f"wiki.{name}.raw").write_text("".join(articles))
    splits = {"train": "wiki.train.raw", "val": "wiki.valid.raw", "test": "wiki.test.raw"}
    return DataRecipe(
        sources={"wiki": WikiText(str(source), splits=splits)},
        filters=[Normalize()],
        dedup=Deduplication(),
        tokenizer=TokenizerSpec(vocab_size=400),
    )


def test_a_new_test_file_reuses_the_train_and_val_work(
    split_files_recipe: DataRecipe, raw_articles: list[str], tmp_path: Path
) -> None:
    first = prepare_dataset(split_files_recipe, tmp_path / "cache")
    (tmp_path / "splits" / "wiki.test.raw").write_text("".join(raw_articles[13:15]))
    second = prepare_dataset(split_files_recipe, tmp_path / "cache")
    assert second != first
    before, after = (read_manifest(p)["sources"]["wiki"] for p in (first, second))
    for split in ("train", "val"):  # the same documents stage and shards directory, not rebuilt
        assert after["documents_stages"][split] == before["documents_stages"][split]
        assert after["shards"][split] == before["shards"][split]
        for chunk in (first / "wiki" / split).iterdir():
            assert (second / "wiki" / split / chunk.name).stat().st_ino == chunk.stat().st_ino
    assert (second / TOKENIZER).stat().st_ino == (first / TOKENIZER).stat().st_ino
    assert after["documents_stages"]["test"] != before["documents_stages"]["test"]
    assert after["shards"]["test"] != before["shards"]["test"]
    test_titles = [text.split("\n", 1)[0] for text in read_documents(Path(after["documents_stages"]["test"]), "test")]
    assert test_titles == [article.split("\n", 1)[0].rstrip() for article in raw_articles[13:15]]
    assert after["splits"]["test"]["documents"] == 2


def test_a_new_test_file_that_repeats_a_train_document_rebuilds_train_without_it(
    split_files_recipe: DataRecipe, raw_articles: list[str], tmp_path: Path
) -> None:
    first = prepare_dataset(split_files_recipe, tmp_path / "cache")
    (tmp_path / "splits" / "wiki.test.raw").write_text("".join([raw_articles[13], raw_articles[2]]))
    second = prepare_dataset(split_files_recipe, tmp_path / "cache")
    before, after = (read_manifest(p)["sources"]["wiki"] for p in (first, second))
    assert after["documents_stages"]["train"] == before["documents_stages"]["train"]  # cleaning is reused
    assert after["shards"]["train"] != before["shards"]["train"]  # the shards are not: one document less
    assert after["report"]["removed.dedup.train"] == 1
    assert after["splits"]["train"]["documents"] == before["splits"]["train"]["documents"] - 1
    assert (second / TOKENIZER).stat().st_ino != (first / TOKENIZER).stat().st_ino  # BPE learns from train
    assert (first / "wiki" / "train").is_dir()  # the first preparation keeps its data for a training reading it
    assert read_manifest(first)["sources"]["wiki"]["splits"] == before["splits"]


def test_a_source_edited_in_place_builds_a_new_directory(recipe: DataRecipe, tmp_path: Path) -> None:
    prepared = prepare_dataset(recipe, tmp_path / "cache")
    manifest = (prepared / MANIFEST).read_text()
    path = tmp_path / "source" / "wiki.small.raw"
    text = path.read_text()
    path.write_text(text.replace("lobster", "Lobster", 1))  # same size, other content
    rebuilt = prepare_dataset(recipe, tmp_path / "cache")
    assert rebuilt != prepared
    assert (prepared / MANIFEST).read_text() == manifest  # a training reading it keeps its data
    assert [f["sha256"] for f in read_manifest(rebuilt)["sources"]["wiki"]["files"]] == [sha256_file(path)]


def test_prepared_directories_have_normal_permissions_and_no_locks_beside_them(
    recipe: DataRecipe, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "wiki"
    prepared = prepare_dataset(recipe, tmp_path / "cache", output_dir=out)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(prepared.stat().st_mode) == 0o777 & ~umask
    assert sorted(path.name for path in out.parent.iterdir()) == ["wiki"]
    assert all(path.suffix == ".lock" for path in (tmp_path / "cache" / "locks").iterdir())


def test_a_failed_build_leaves_nothing_and_a_killed_one_is_cleaned_up(
    recipe: DataRecipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"

    def fail(*args: object) -> None:
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline_module, "write_token_shards", fail)
        with pytest.raises(RuntimeError, match="disk full"):
            prepare_dataset(recipe, tmp_path / "cache", output_dir=out)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cache", "source"]

    stale = tmp_path / ".out.partial-99999999"  # as a SIGKILL would leave it
    stale.mkdir()
    (stale / MANIFEST).write_text("{}")
    assert prepare_dataset(recipe, tmp_path / "cache", output_dir=out) == out
    assert not stale.exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda out: (out / "train").mkdir(parents=True) or (out / "train" / "mine.txt").write_text("x"),
            "holds no lmpre manifest",
        ),
        (lambda out: out.mkdir() or (out / MANIFEST).write_text("not json {"), "holds no lmpre manifest"),
        (lambda out: out.mkdir() or (out / MANIFEST).write_text('{"mine": 1}'), "holds no lmpre manifest"),
        (lambda out: out.write_text("a file"), "is a file"),
    ],
)
def test_output_dir_that_lmpre_did_not_write_is_never_touched(
    recipe: DataRecipe, tmp_path: Path, make, message: str
) -> None:
    out = tmp_path / "mine"
    make(out)
    before = sorted((str(p), p.read_bytes()) for p in [out, *out.rglob("*")] if p.is_file())
    with pytest.raises(DataError, match=message):
        prepare_dataset(recipe, tmp_path / "cache", output_dir=out)
    assert sorted((str(p), p.read_bytes()) for p in [out, *out.rglob("*")] if p.is_file()) == before


def test_output_dir_of_other_settings_is_refused_not_rebuilt(recipe: DataRecipe, tmp_path: Path) -> None:
    out = prepare_dataset(recipe, tmp_path / "cache", output_dir=tmp_path / "out")
    with pytest.raises(
        DataError, match=r"other settings or source files \(differing: tokenizer\).*another data\.output_dir"
    ):
        prepare_dataset(replace(recipe, tokenizer=TokenizerSpec(vocab_size=380)), tmp_path / "cache", output_dir=out)


def test_deduplication_removes_copies_and_train_copies_of_held_out_text(
    raw_articles: list[str], recipe: DataRecipe, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    once = prepare_dataset(recipe, tmp_path / "cache")
    (source / "wiki.copy.raw").write_text(
        "".join(raw_articles[:12]).replace(" \n", "\t \n")
    )  # a copy, trailing space added
    twice = prepare_dataset(recipe, tmp_path / "cache")
    counts = {path: read_manifest(path)["splits"] for path in (once, twice)}
    assert {split: s["documents"] for split, s in counts[once].items()} == {
        split: s["documents"] for split, s in counts[twice].items()
    }
    report = read_manifest(twice)["sources"]["wiki"]["report"]
    assert sum(report[f"removed.dedup.{split}"] for split in ("train", "val", "test")) == 12
    audit = replace(recipe, removed_examples=2)
    removed = [json.loads(line) for line in (prepare_dataset(audit, tmp_path / "cache") / "removed.jsonl").open()]
    assert removed
    assert all(example["reason"].startswith("dedup.exact.") for example in removed)
    titles = {article.split("\n", 1)[0].strip() for article in raw_articles[:12]}
    assert all(example["text"].split("\n", 1)[0].strip() in titles for example in removed)


def test_a_held_out_article_repeated_in_train_is_dropped_from_train(raw_articles: list[str], tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "wiki.train.raw").write_text("".join(raw_articles[:6]) + raw_articles[7].replace("lobster", "crab"))
    (source / "wiki.valid.raw").write_text("".join(raw_articles[6:8]))
    splits = {"train": "wiki.train.raw", "val": "wiki.valid.raw"}
    recipe = DataRecipe(
        sources={"wiki": WikiText(str(source), splits=splits)},
        dedup=Deduplication(),
        tokenizer=TokenizerSpec(vocab_size=380),
    )
    manifest = read_manifest(prepare_dataset(recipe, tmp_path / "cache"))
    assert manifest["splits"]["train"]["documents"] == 6  # the near-copy of a val article is gone
    assert manifest["splits"]["val"]["documents"] == 2
    assert manifest["sources"]["wiki"]["report"]["removed.dedup.train"] == 1


def test_worker_processes_give_the_same_documents_as_one(
    recipe: DataRecipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmpre.data import curate

    monkeypatch.setattr(curate, "BATCH_BYTES", 10_000)  # many batches, results reordered if they could be
    sigint = signal.getsignal(signal.SIGINT)
    one = prepare_dataset(recipe, tmp_path / "a", workers=1)
    assert signal.getsignal(signal.SIGINT) is sigint  # Ctrl-C still works in the process that prepared
    two = prepare_dataset(recipe, tmp_path / "b", workers=2)
    stages = [read_manifest(p)["sources"]["wiki"]["documents_stages"] for p in (one, two)]
    for split in ("train", "val", "test"):
        texts = [list(read_documents(Path(stage[split]), split)) for stage in stages]
        assert texts[0] == texts[1]
    assert (one / TOKENIZER).read_bytes() == (two / TOKENIZER).read_bytes()


def test_empty_corpus_names_the_source(tmp_path: Path) -> None:
    (tmp_path / "wiki.empty.raw").write_text(" \n \n")
    recipe = DataRecipe(sources={"wiki": WikiText(str(tmp_path))}, tokenizer=TokenizerSpec(vocab_size=380))
    with pytest.raises(DataError, match=r"data\.sources\.wiki yields no document"):
        prepare_dataset(recipe, tmp_path / "cache")


SCRIPT = """
from pathlib import Path
from lmpre.data import DataRecipe, TokenizerSpec, prepare_dataset
from lmpre.data.sources.wikitext import WikiText
source = WikiText({source!r}, val_fraction=0.25)
recipe = DataRecipe(sources={{"wiki": source}}, tokenizer=TokenizerSpec(vocab_size=380))
print(prepare_dataset(recipe, Path({cache!r}), workers=2))
"""


def test_a_script_without_a_main_guard_prepares(recipe: DataRecipe, tmp_path: Path) -> None:
    script = tmp_path / "prepare_it.py"  # no `if __name__ == "__main__":`: worker processes must not re-run it
    script.write_text(SCRIPT.format(source=str(tmp_path / "source"), cache=str(tmp_path / "cache")))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert read_manifest(Path(result.stdout.strip().splitlines()[-1])) is not None


def test_killing_prepare_kills_its_workers(raw_articles: list[str], tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "wiki.big.raw").write_text("".join(raw_articles) * 20)  # long enough to be killed mid-way
    script = tmp_path / "prepare_it.py"
    script.write_text(SCRIPT.format(source=str(source), cache=str(tmp_path / "cache")))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (workers := _children(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers, "no worker process started"
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers)
    assert not list((tmp_path / "cache" / "documents").glob("wiki-*/stage.json"))


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\nState:\tZ" not in status.read_text()
