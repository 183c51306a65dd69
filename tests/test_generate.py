"""`python -m lmpre.generate` on tiny checkpoints of all three objectives, trained on real WikiText."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra_configs import compose_config
from launch import TINY_MODEL
from omegaconf import DictConfig

from lmpre import checkpoint
from lmpre.errors import LmpreError
from lmpre.generate import run, spans_by_sentinel
from lmpre.train import train

OBJECTIVES = {"gpt": ["model.sample_tokens=4"], "bert": [], "t5": ["model.backbone.n_decoder_layer=1"]}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, wikitext_overrides: list[str]) -> dict[str, Path]:
    """A last.ckpt (tokenizer.json beside it) per objective, after a few steps on WikiText."""
    paths = {}
    for model, extra in OBJECTIVES.items():
        run_dir = tmp_path_factory.mktemp(model)
        steps = ["trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.limit_val_batches=1"]
        cfg = compose_config(
            "train", f"model={model}", *extra, *wikitext_overrides, *TINY_MODEL, *steps, "validate_first=false",
            f"paths.output_dir={run_dir}",
        )  # fmt: skip
        train(cfg)
        paths[model] = run_dir / "checkpoints" / "last.ckpt"
    return paths


def generate_cfg(ckpt: Path, *overrides: str) -> DictConfig:
    return compose_config("generate", f"ckpt_path={ckpt}", *overrides)


class Writes(io.StringIO):
    """Records each write, to see text arrive while it is generated."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def generated(ckpt: Path, *overrides: str) -> str:
    out = io.StringIO()
    run(generate_cfg(ckpt, *overrides), out)
    return out.getvalue()


def test_a_causal_lm_continues_the_prompt_streamed_and_seeded(checkpoints: dict[str, Path]) -> None:
    ckpt, prompt = checkpoints["gpt"], "prompt=The history of"
    out = Writes()
    run(generate_cfg(ckpt, prompt, "max_new_tokens=20", "seed=1"), out)
    text = out.getvalue()
    assert text.startswith("The history of")
    assert len(text) > len("The history of\n")
    assert len([w for w in out.writes if w]) > 3  # streamed: token by token, not once at the end
    assert generated(ckpt, prompt, "max_new_tokens=20", "seed=1") == text
    others = {generated(ckpt, prompt, "max_new_tokens=20", f"seed={seed}") for seed in (2, 3, 4)}
    assert others - {text}, "another seed samples other text"


def test_greedy_generation_is_the_backbones_recomputed_greedy_continuation(checkpoints: dict[str, Path]) -> None:
    ckpt = checkpoints["gpt"]
    objective, tokenizer = checkpoint.load_objective(ckpt), checkpoint.load_tokenizer(ckpt)
    prompt_ids = tokenizer.encode("In the year").ids
    reference = objective.model.generate(torch.tensor([prompt_ids]), 12, temperature=0.0)[0, len(prompt_ids) :]
    ids = reference.tolist()
    eot = objective.special_tokens["eot"]
    ids = ids[: ids.index(eot)] if eot in ids else ids
    expected = "In the year" + tokenizer.decode(ids) + "\n"
    assert generated(ckpt, "prompt=In the year", "temperature=0", "max_new_tokens=12") == expected


def test_prompts_file_gives_one_answer_per_line(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The history of\n\nIn 1990 ,\n")
    text = generated(checkpoints["gpt"], f"prompts_file={prompts}", "max_new_tokens=5", "temperature=0")
    assert text.startswith("The history of")
    assert "\n\nIn 1990 ," in text  # the blank line is skipped: two prompts, one blank line between the answers
    assert text.count("In 1990 ,") == 1


def test_t5_fills_the_sentinel_gaps(checkpoints: dict[str, Path]) -> None:
    prompt = "The <extra_id_0> of the city was <extra_id_1> in 1850 ."
    text = generated(checkpoints["t5"], f"prompt='{prompt}'", "temperature=0", "max_new_tokens=16")
    assert text.endswith("\n")
    assert text.count("\n") == 1
    assert "extra_id" not in text
    # The prompt's own text stays, in order, around the filled gaps.
    rest = text
    for part in ("The", " of the city was", " in 1850 ."):
        assert part in rest, (part, text)
        rest = rest[rest.index(part) + len(part) :]


def test_the_decoders_spans_go_to_their_sentinels() -> None:
    gaps, stops = [100, 101], {0, 102}  # sentinels in the prompt; end-of-text and the next sentinel
    assert spans_by_sentinel([100, 5, 6, 101, 7, 102, 8], gaps, stops) == {100: [5, 6], 101: [7]}
    assert spans_by_sentinel([9, 100, 5, 0, 101, 7], gaps, stops) == {100: [5]}  # before a sentinel: nowhere
    assert spans_by_sentinel([101, 7, 100, 5], gaps, stops) == {101: [7], 100: [5]}


def test_bert_lists_candidates_for_each_mask(checkpoints: dict[str, Path]) -> None:
    text = generated(checkpoints["bert"], "prompt='The <mask> of the city was <mask> in 1850 .'", "candidates=3")
    filled, *masks = text.splitlines()
    assert "<mask>" not in filled
    assert " of the city was" in filled
    assert [line.split(":")[0] for line in masks] == ["  <mask> 1", "  <mask> 2"]
    for line in masks:
        probs = [float(p) for p in re.findall(r" (\d+\.\d)%", line)]
        assert len(probs) == 3
        assert probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 100


@pytest.mark.parametrize(
    ("model", "overrides", "match"),
    [
        ("t5", ["prompt=no gap here"], "has no gap to fill: mark each gap with a sentinel, <extra_id_0>"),
        ("bert", ["prompt=no mask here"], "has no <mask> to fill"),
        ("gpt", [], "pass a prompt"),
        ("gpt", ["prompt=a", "prompts_file=x.txt"], "not both"),
        ("gpt", ["prompts_file=missing.txt"], "prompts_file=missing.txt does not exist"),
        ("gpt", ["prompt=a", "temperature=-1"], "temperature=-1.0 must be 0"),
    ],
)
def test_mistakes_are_clear_errors(checkpoints: dict[str, Path], model: str, overrides: list[str], match: str) -> None:
    with pytest.raises(LmpreError, match=match):
        run(generate_cfg(checkpoints[model], *overrides), io.StringIO())


def test_a_checkpoint_that_is_missing_or_not_one_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LmpreError, match="does not exist"):
        run(generate_cfg(tmp_path / "missing.ckpt", "prompt=a"), io.StringIO())
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(LmpreError, match="cannot be read"):
        run(generate_cfg(garbage, "prompt=a"), io.StringIO())
    with pytest.raises(LmpreError, match="pass the checkpoint"):
        run(compose_config("generate", "prompt=a"), io.StringIO())


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lmpre.generate", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_the_command_streams_to_the_terminal_and_fails_with_one_line(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    ok = cli(f"ckpt_path={checkpoints['gpt']}", "prompt=The history of", "max_new_tokens=8", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("The history of")
    assert list(tmp_path.iterdir()) == []  # no run directory, no log file
    missing = cli(f"ckpt_path={tmp_path / 'none.ckpt'}", "prompt=x", cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: ckpt_path=")
    assert missing.stderr.count("\n") == 1
