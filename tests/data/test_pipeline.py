import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lmpre.data import DataConfig, prepare_dataset, read_manifest
from lmpre.data import pipeline as pipeline_module
from lmpre.data.documents import TextSpan
from lmpre.data.pipeline import TOKENIZER
from lmpre.errors import DataError


def test_manifest_matches_sources_shards_and_tokenizer(prepared_wikitext: Path, wikitext_config: DataConfig) -> None:
    manifest = read_manifest(prepared_wikitext)
    assert manifest is not None
    assert manifest["config"] == wikitext_config.fingerprint()
    assert manifest["dtype"] == "uint16"
    assert manifest["tokenizer"]["vocab_size"] == 512
    assert manifest["tokenizer"]["special_tokens"]["eot"] == 0
    assert manifest["tokenizer"]["sha256"] == pipeline_module._sha256(prepared_wikitext / TOKENIZER)
    for split, file_name, documents in [("train", "wiki.test.raw", 62), ("val", "wiki.valid.raw", 60)]:
        stats = manifest["splits"][split]
        raw = Path(wikitext_config.source) / file_name
        assert stats["files"] == [
            {"path": str(raw), "size": raw.stat().st_size, "sha256": pipeline_module._sha256(raw)}
        ]
        assert stats["documents"] == documents
        assert 0.99 * raw.stat().st_size < stats["bytes"] < raw.stat().st_size  # trailing spaces stripped
        chunks = json.loads((prepared_wikitext / split / "index.json").read_text())["chunks"]
        assert stats["tokens"] == sum(chunk["dim"] for chunk in chunks)
        assert 1.5 < stats["bytes"] / stats["tokens"] < 3  # 409 merges on English


def test_same_config_reuses_and_other_vocab_size_rebuilds(small_config: DataConfig, tmp_path: Path) -> None:
    first = prepare_dataset(small_config, cache_dir=tmp_path / "cache")
    built_at = (first / "manifest.json").stat().st_mtime_ns
    assert prepare_dataset(small_config, cache_dir=tmp_path / "cache") == first
    assert (first / "manifest.json").stat().st_mtime_ns == built_at

    other = prepare_dataset(replace(small_config, vocab_size=400), cache_dir=tmp_path / "cache")
    assert other != first
    assert read_manifest(other)["tokenizer"]["vocab_size"] == 400
    assert (first / "manifest.json").stat().st_mtime_ns == built_at


def test_changed_source_file_rebuilds(small_config: DataConfig, tmp_path: Path) -> None:
    prepared = prepare_dataset(small_config, cache_dir=tmp_path / "cache")
    tokens = read_manifest(prepared)["splits"]["val"]["tokens"]
    with (Path(small_config.source) / "valid.raw").open("a") as file:
        file.write(" = Appended =\n \n More text to tokenize .\n")
    assert prepare_dataset(small_config, cache_dir=tmp_path / "cache") == prepared
    assert read_manifest(prepared)["splits"]["val"]["tokens"] > tokens


def test_interrupted_preparation_is_never_used(
    small_config: DataConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_token_shards = pipeline_module.write_token_shards

    def interrupted_after_train(spans: list[TextSpan], out_dir: Path, *args: Any) -> int:
        if out_dir.name == "val":
            raise KeyboardInterrupt
        return write_token_shards(spans, out_dir, *args)

    monkeypatch.setattr(pipeline_module, "write_token_shards", interrupted_after_train)
    target = tmp_path / "prepared"
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(small_config, cache_dir=tmp_path / "cache", output_dir=target)
    assert not target.exists()
    assert len(list(tmp_path.glob("prepared.partial-*/train/index.json"))) == 1

    monkeypatch.undo()
    assert prepare_dataset(small_config, cache_dir=tmp_path / "cache", output_dir=target) == target
    assert read_manifest(target) is not None
    assert not list(tmp_path.glob("prepared.partial-*"))


def test_output_dir_of_another_config_names_the_differences(
    prepared_wikitext: Path, wikitext_config: DataConfig
) -> None:
    assert prepare_dataset(wikitext_config, Path("unused"), output_dir=prepared_wikitext) == prepared_wikitext
    other = replace(wikitext_config, vocab_size=1024, format="text")
    with pytest.raises(DataError, match=r"\(format, vocab_size differ\).*data.output_dir"):
        prepare_dataset(other, Path("unused"), output_dir=prepared_wikitext)


def test_output_dir_with_foreign_files_is_left_alone(small_config: DataConfig, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="other files than prepared data"):
        prepare_dataset(small_config, tmp_path / "cache", output_dir=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").exists()


def test_empty_corpus_names_the_file(small_config: DataConfig, tmp_path: Path) -> None:
    (Path(small_config.source) / "valid.raw").write_text("")
    with pytest.raises(DataError, match=r"No text in .*valid\.raw"):
        prepare_dataset(small_config, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    ("changes", "message"), [({"format": "xml"}, "data.format=xml"), ({"vocab_size": 300}, "data.vocab_size=300")]
)
def test_invalid_settings_name_the_key(small_config: DataConfig, tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        prepare_dataset(replace(small_config, **changes), cache_dir=tmp_path / "cache")


def test_cli_reports_a_bad_source_without_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = subprocess.run(
        [sys.executable, "-m", "lmpre.prepare", "data=wiki", f"data.source={missing}", f"paths.cache_dir={tmp_path}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert f"data.source={missing} is not a directory" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_every_spelling_of_a_source_dir_shares_one_key(small_config: DataConfig, tmp_path: Path) -> None:
    assert small_config.source is not None
    link = tmp_path / "link"
    link.symlink_to(small_config.source)
    for spelling in (str(link), f"{link}/./", str(Path(small_config.source).resolve())):
        assert replace(small_config, source=spelling).key() == small_config.key(), spelling
