"""`python -m lmpre.evaluate` on tiny trained checkpoints of each objective: its numbers are the objective's own loss
recomputed by hand over every window, for the val and test splits, raw text files and the character metric."""

from __future__ import annotations

import json
import lzma
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from hydra_configs import compose_config
from launch import OBJECTIVES, TINY_MODEL
from litdata import StreamingDataset, TokensLoader
from omegaconf import OmegaConf

from lmpre import checkpoint
from lmpre.data.corpora import bundled
from lmpre.errors import ConfigError, DataError, LmpreError
from lmpre.evaluate import evaluate, write_report
from lmpre.evaluation import corruption_generator
from lmpre.objectives import IGNORE_INDEX, CausalLM, PretrainingObjective
from lmpre.train import train

SPLIT = {"val": 0.2, "test": 0.2}  # of the corpus' characters, taken from its end (holdout: tail)


@dataclass(frozen=True)
class Corpus:
    """12 kB of Tiny Shakespeare, one token per byte, 60/20/20 train/val/test; and 3 kB it does not hold."""

    text: Path
    held_out: Path
    root: Path

    @property
    def data(self) -> list[str]:
        return [
            "data=shakespeare",
            f"data.source={self.text}",
            f"data.sources.corpus.val_fraction={SPLIT['val']}",
            f"data.sources.corpus.test_fraction={SPLIT['test']}",
            f"data.cache_dir={self.root / 'cache'}",
            f"data.output_dir={self.root / 'prepared'}",
            "data.workers=1",
        ]

    def split_text(self, split: str) -> str:
        text = self.text.read_text()
        val_start = round(len(text) * (1 - SPLIT["val"] - SPLIT["test"]))
        test_start = round(len(text) * (1 - SPLIT["test"]))
        return text[val_start:test_start] if split == "val" else text[test_start:]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("evaluate")
    with lzma.open(bundled("tinyshakespeare") / "input.txt.xz", "rt") as file:
        text = file.read(15000)
    (root / "corpus.txt").write_text(text[:12000])
    (root / "held_out.txt").write_text(text[12000:])
    return Corpus(root / "corpus.txt", root / "held_out.txt", root)


@pytest.fixture(scope="module")
def checkpoints(corpus: Corpus) -> dict[str, Path]:
    """A 4-step run of each objective; its run config saved where Hydra saves it (RUN/.hydra/config.yaml)."""
    found = {}
    for model, extra in OBJECTIVES.items():
        run_dir = corpus.root / "runs" / model
        steps = ["trainer.max_steps=4", "trainer.val_check_interval=4", "validate_first=false", "optim.lr=3e-3"]
        cfg = compose_config(
            "train", f"model={model}", *extra, *corpus.data, *TINY_MODEL, *steps, f"paths.output_dir={run_dir}"
        )
        train(cfg)
        (run_dir / ".hydra").mkdir()
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
        found[model] = run_dir / "checkpoints" / "last.ckpt"
    return found


def run_evaluate(ckpt: Path, *overrides: str) -> dict:
    return evaluate(compose_config("evaluate", f"ckpt_path={ckpt}", "batch_size=8", *overrides))


def split_windows(corpus: Corpus, objective: PretrainingObjective, split: str) -> list[torch.Tensor]:
    """Every window of the split as litdata reads it for training (without dropping a last, incomplete batch), in
    batches of 8."""
    datamodule = instantiate(compose_config("train", *corpus.data).data)
    datamodule.prepare_data()
    loader = TokensLoader(block_size=objective.window_length(32))
    dataset = StreamingDataset(str(datamodule.prepared_dir / "corpus" / split), item_loader=loader, drop_last=False)
    windows = [torch.from_numpy(window.astype(np.int64)) for window in dataset]
    return [torch.stack(windows[i : i + 8]) for i in range(0, len(windows), 8)]


def by_hand(objective: PretrainingObjective, batches: list[torch.Tensor], name: str, seed: int = 0) -> tuple:
    """(windows, scored tokens, mean loss, accuracy) from the objective itself, batch by batch."""
    nats, tokens, correct, windows = 0.0, 0, 0, 0
    with torch.no_grad():
        for index, window in enumerate(batches):
            if isinstance(objective, CausalLM):  # straight from the backbone: next-token log-probabilities
                logits, targets = objective.model(window[:, :-1]), window[:, 1:]
            else:
                pred = objective(window, corruption_generator(seed, name, index, torch.device("cpu")))
                logits, targets = pred.logits, pred.targets
            scored = targets != IGNORE_INDEX
            nats += F.cross_entropy(logits[scored], targets[scored], reduction="sum").item()
            tokens += int(scored.sum())
            correct += int((logits[scored].argmax(-1) == targets[scored]).sum())
            windows += len(window)
    return windows, tokens, nats / tokens, correct / tokens


@pytest.mark.parametrize("model", list(OBJECTIVES))
def test_split_metrics_are_the_objectives_loss_over_every_window(
    model: str, checkpoints: dict[str, Path], corpus: Corpus
) -> None:
    ckpt = checkpoints[model]
    report = run_evaluate(ckpt)
    objective = checkpoint.load_objective(ckpt).eval()
    windows, tokens, loss, acc = by_hand(objective, split_windows(corpus, objective, "val"), "val")

    assert report["data"]["config"] == str(ckpt.parent.parent / ".hydra" / "config.yaml")  # the run's own data
    assert report["seq_len"] == 32  # the checkpoint's, not data=shakespeare's 64
    split = report["split"]
    window = objective.window_length(32)
    val_tokens = len(corpus.split_text("val")) + 1  # one token per character, and the document's end
    assert split["windows"] == windows == val_tokens // window  # every window of the split
    assert split["tokens"] == tokens
    assert split["loss"] == pytest.approx(loss, rel=1e-6)
    assert split["acc"] == pytest.approx(acc, rel=1e-6)
    assert split["ppl"] == pytest.approx(math.exp(loss), rel=1e-6)
    if model == "gpt":
        assert tokens == windows * 32
        # bits per byte as training's val/bpb: the split's bytes per token (the document end has none)
        assert split["bpb"] == pytest.approx(loss / math.log(2) * val_tokens / (val_tokens - 1), rel=1e-6)
    else:
        assert "bpb" not in split
        assert 0 < tokens < windows * window / 2  # only the corrupted positions are scored
    if model == "bert":
        again = run_evaluate(ckpt)["split"]
        assert again == split  # the noise is seeded: the same numbers
        assert run_evaluate(ckpt, "seed=1")["split"]["loss"] != split["loss"]  # … by the seed


def test_the_test_split_with_explicit_data_overrides(checkpoints: dict[str, Path], corpus: Corpus) -> None:
    ckpt = checkpoints["bert"]
    report = run_evaluate(ckpt, "split=test", *corpus.data)
    objective = checkpoint.load_objective(ckpt).eval()
    windows, tokens, loss, _ = by_hand(objective, split_windows(corpus, objective, "test"), "test")
    assert report["data"]["config"] == "data="
    assert report["split"]["name"] == "test"
    assert report["split"]["windows"] == windows == (len(corpus.split_text("test")) + 1) // 32
    assert report["split"]["tokens"] == tokens
    assert report["split"]["loss"] == pytest.approx(loss, rel=1e-6)


def test_a_mixture_is_scored_per_source(checkpoints: dict[str, Path], corpus: Corpus) -> None:
    ckpt = checkpoints["gpt"]
    mixture = [o for o in corpus.data if not o.startswith(("data.output_dir=", "data.source="))]
    mixture += [
        f"data.sources.corpus.path={corpus.text}",
        f"data.output_dir={corpus.root / 'prepared-mixture'}",
        "+source@data.sources.extra=text",
        f"data.sources.extra.path={corpus.held_out}",
        "data.sources.extra.holdout=tail",
        "data.sources.extra.val_fraction=0.5",
        "data.sources.extra.test_fraction=0",
    ]
    split = run_evaluate(ckpt, *mixture)["split"]
    alone = run_evaluate(ckpt)["split"]
    corpus_alone, extra = split["sources"]["corpus"], split["sources"]["extra"]
    assert corpus_alone == {k: v for k, v in alone.items() if k != "name"}  # the same windows, the same numbers
    assert extra["windows"] == (1500 + 1) // 33  # half of the 3 kB held-out text, and its end
    assert split["windows"] == corpus_alone["windows"] + extra["windows"]
    assert split["tokens"] == corpus_alone["tokens"] + extra["tokens"]
    mean = (corpus_alone["loss"] * corpus_alone["tokens"] + extra["loss"] * extra["tokens"]) / split["tokens"]
    assert split["loss"] == pytest.approx(mean, rel=1e-9)


def test_the_character_metric_of_byte_level_data(checkpoints: dict[str, Path], corpus: Corpus) -> None:
    """Block i is characters [64i, 64i+64) of the val text; it predicts characters 64i+1 … 64i+64 (issue 10)."""
    ckpt = checkpoints["gpt"]
    chars = run_evaluate(ckpt)["chars"]
    objective = checkpoint.load_objective(ckpt).eval()
    tokenizer = checkpoint.load_tokenizer(ckpt)
    ids = torch.tensor(tokenizer.encode(corpus.split_text("val")).ids)
    blocks = (len(ids) - 1) // 64
    windows = [ids[64 * i : 64 * i + 65] for i in range(blocks)]
    _, characters, loss, _ = by_hand(objective, [torch.stack(windows)], "unused")
    assert chars["block"] == 64
    assert chars["blocks"] == blocks
    assert chars["characters"] == characters == 64 * blocks
    assert chars["loss"] == pytest.approx(loss, rel=1e-6)


@pytest.mark.parametrize("model", ["gpt", "t5"])
def test_a_raw_text_file_is_scored_with_the_checkpoints_tokenizer(
    model: str, checkpoints: dict[str, Path], corpus: Corpus
) -> None:
    ckpt = checkpoints[model]
    compressed = corpus.root / "held_out.txt.xz"
    compressed.write_bytes(lzma.compress(corpus.held_out.read_bytes()))
    report = run_evaluate(ckpt, "split=null", f"texts=[{corpus.root}/held_*.txt,{compressed}]")
    assert "split" not in report
    plain, packed = report["texts"][str(corpus.held_out)], report["texts"][str(compressed)]
    assert plain == packed  # .xz read as the text source reads it

    text = corpus.held_out.read_text()
    objective = checkpoint.load_objective(ckpt).eval()
    eot = objective.special_tokens["eot"]
    ids = checkpoint.load_tokenizer(ckpt).encode(text).ids
    assert plain["bytes"] == len(text.encode()) == len(ids)  # one token per byte
    if model == "gpt":  # the document between two <|endoftext|>: each of its tokens and its end predicted once
        stream = torch.tensor([eot, *ids, eot])
        windows = [stream[i : i + 33] for i in range(0, len(stream) - 1, 32)]
        full, last = torch.stack(windows[:-1]), windows[-1][None]
        _, tokens, loss, _ = by_hand(objective, [full, last], "unused")
        assert plain["tokens"] == tokens == len(ids) + 1
        assert plain["loss"] == pytest.approx(loss, rel=1e-6)
        assert plain["bpb"] == pytest.approx(loss * tokens / math.log(2) / len(text.encode()), rel=1e-6)
    else:
        window = objective.window_length(32)
        stream = torch.tensor([*ids, eot])
        windows = [stream[i : i + window] for i in range(0, len(stream), window)]
        assert len(windows[-1]) < window  # a batch of its own: score_windows batches windows of one length
        full = windows[:-1]
        batches = [torch.stack(full[i : i + 8]) for i in range(0, len(full), 8)] + [windows[-1][None]]
        _, tokens, loss, _ = by_hand(objective, batches, "text")
        assert plain["tokens"] == tokens
        assert plain["loss"] == pytest.approx(loss, rel=1e-6)
        assert "bpb" not in plain


def test_data_from_another_tokenizer_is_refused(checkpoints: dict[str, Path], corpus: Corpus) -> None:
    ckpt = checkpoints["gpt"]
    other = [o for o in corpus.data if not o.startswith("data.output_dir=")]
    bpe = [
        f"data.output_dir={corpus.root / 'prepared-bpe'}",
        "data.tokenizer.kind=bpe",
        "data.tokenizer.vocab_size=400",
    ]
    with pytest.raises(DataError, match=r"prepared with another tokenizer .*data.tokenizer.kind=file") as refused:
        run_evaluate(ckpt, *other, *bpe)
    remedy = str(refused.value).split("tokenizer: ")[-1].split()  # the settings the message names
    assert remedy == ["data.tokenizer.kind=file", f"data.tokenizer.path={ckpt.parent / 'tokenizer.json'}"]
    report = run_evaluate(ckpt, *other, f"data.output_dir={corpus.root / 'prepared-file'}", *remedy)
    assert report["split"]["loss"] == run_evaluate(ckpt)["split"]["loss"]  # the same text, the same tokens
    assert "chars" in report  # still one token per byte


def test_without_its_run_config_a_checkpoint_is_evaluated_on_the_fallback_data(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint copied away from its run: data=wiki (here data=shakespeare, whose byte tokenizer it shares)."""
    import lmpre.evaluate

    moved = tmp_path / "elsewhere" / "last.ckpt"
    moved.parent.mkdir()
    for file in ("last.ckpt", "tokenizer.json"):
        (moved.parent / file).write_bytes((checkpoints["gpt"].parent / file).read_bytes())
    monkeypatch.setattr(lmpre.evaluate, "FALLBACK_DATA", "shakespeare")
    monkeypatch.setenv("LMPRE_CACHE_DIR", str(tmp_path / "cache"))
    report = run_evaluate(moved)
    assert report["data"]["config"] == "data=shakespeare"
    assert report["split"]["windows"] == 111540 // 33  # the last 10% of Tiny Shakespeare, and its end
    assert report["chars"]["blocks"] == (111540 - 1) // 64


def test_settings_that_cannot_work_are_refused(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="ckpt_path is not set"):
        evaluate(compose_config("evaluate"))
    with pytest.raises(ConfigError, match="split=train"):
        run_evaluate(checkpoints["gpt"], "split=train")
    with pytest.raises(DataError, match="nowhere"):
        run_evaluate(checkpoints["gpt"], f"texts=[{tmp_path / 'nowhere.txt'}]")
    with pytest.raises(LmpreError, match="nothing to evaluate"):
        run_evaluate(checkpoints["gpt"], "split=null")
    with pytest.raises(LmpreError, match=r"cannot write the report to .*: pass out=PATH"):
        write_report({}, tmp_path / "a-file" / "report.json")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lmpre.evaluate", *args, f"hydra.run.dir={cwd / 'run'}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_command_prints_a_table_and_writes_json_beside_the_checkpoint(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    ckpt = checkpoints["t5"]
    result = run_cli(f"ckpt_path={ckpt}", "batch_size=8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    written = ckpt.with_name("last.eval-val.json")
    assert f"wrote {written}" in result.stdout
    report = json.loads(written.read_text())
    assert report == run_evaluate(ckpt)
    assert f"{report['split']['loss']:.4f}" in result.stdout  # the table
    assert "SpanCorruption" in result.stdout


def test_an_unusable_checkpoint_is_one_error_line(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    result = run_cli(f"ckpt_path={ckpt}", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: ckpt_path={ckpt} does not exist: pass the path of a checkpoint, e.g. RUN/checkpoints/last.ckpt"
    )
    ckpt.write_text("not a checkpoint")
    with pytest.raises(LmpreError, match=r"ckpt_path=.* cannot be read"):
        evaluate(compose_config("evaluate", f"ckpt_path={ckpt}"))
