"""`python -m lmpre.prepare`: the report it prints, and honest exits when it is interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from lmpre.data import TokenDataModule
from lmpre.prepare import report


def prepare_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lmpre.prepare", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_report_shows_reads_removals_and_kept_splits(wiki_data: TokenDataModule) -> None:
    console = Console(record=True, width=200)
    report(wiki_data.manifest, console)
    text = console.export_text()
    assert "source 'corpus': 122 documents read (2.4 MB)" in text
    for split in ("train", "val", "test"):
        tokens = wiki_data.manifest["splits"][split]["tokens"]
        assert f"kept: {split}" in text
        assert f"{tokens:,}" in text


def test_prepare_prints_where_the_data_is_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    temp = tmp_path / "system-temp"
    temp.mkdir()
    process = prepare_cli(
        "data=shakespeare",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"data.output_dir={tmp_path / 'out'}",
        cwd=tmp_path,
        env={"TMPDIR": str(temp)},
    )
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert f"prepared data: {tmp_path / 'out'}" in stdout.replace("\n", "")
    assert "vocab size: 359 (uint16 tokens)" in stdout  # one token per byte, plus the special tokens
    assert [path for path in temp.rglob("*") if path.is_file()] == []


@pytest.mark.parametrize(
    ("signum", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_an_interrupted_prepare_exits_non_zero_and_leaves_nothing(
    signum: int, code: int, word: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    process = prepare_cli("data=wiki", f"data.cache_dir={cache}", "data.tokenizer.vocab_size=8192", cwd=tmp_path)
    start = time.monotonic()
    while not list(cache.glob("documents/.*.partial-*")) and process.poll() is None:  # until it is building
        time.sleep(0.01)
    waited = time.monotonic() - start
    assert process.poll() is None, f"prepare ended before it could be interrupted ({waited:.1f} s)"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, f"signalled after {waited:.1f} s: {stderr}"
    assert any(line.startswith(f"{word}: ") for line in stderr.splitlines()), stderr
    assert "Traceback" not in stderr, stderr
    assert not list(cache.rglob("*.partial-*"))
    assert not list(cache.rglob("manifest.json"))
    assert not list(cache.rglob("stage.json"))
