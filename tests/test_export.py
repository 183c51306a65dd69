"""`python -m lmpre.export` on real checkpoints of every objective: transformers' Auto classes load the export and
give our logits on real text; lmpre loads it back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra_configs import compose_config

from lmpre import checkpoint
from lmpre.errors import ConfigError
from lmpre.export import export, export_checkpoint, load_objective
from lmpre.objectives import CausalLM, MaskedLM, SpanCorruption
from lmpre.train import train

transformers = pytest.importorskip("transformers")

TINY = [
    "model.backbone.d_model=64",
    "model.backbone.n_layer=2",
    "model.backbone.n_head=2",
    "data.seq_len=64",
    "data.batch_size=4",
    "optim.warmup_steps=1",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    "validate_first=false",
    "callbacks.progress=null",
]
TEXT = "The history of the city began in the early years of the nineteenth century, when"


@pytest.fixture
def trained(wikitext_overrides: list[str], tmp_path: Path):
    """A checkpoint of a 2-step run of `model=NAME` with the TINY backbone and `overrides`."""

    def make(model: str, *overrides: str) -> Path:
        out = tmp_path / "run"
        train(
            compose_config("train", *wikitext_overrides, f"model={model}", *TINY, f"paths.output_dir={out}", *overrides)
        )
        return out / "checkpoints" / "last.ckpt"

    return make


def run_export(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lmpre.export", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_cli_exports_a_gpt_checkpoint_that_transformers_and_lmpre_load(trained, tmp_path: Path) -> None:
    ckpt = trained("gpt", "model.sample_tokens=4")
    result = run_export(f"ckpt_path={ckpt}", f"out_dir={tmp_path / 'hf'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GPT2LMHeadModel" in result.stdout
    assert not (tmp_path / "outputs").exists()  # a terminal command: no run directory

    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == checkpoint.load_tokenizer(ckpt).encode(TEXT).ids
    objective = checkpoint.load_objective(ckpt).eval()
    with torch.no_grad():
        ours, theirs = objective.model(ids), model(input_ids=ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4
    # transformers' own decoding (its KV cache, its positions) continues the text as we do
    with torch.no_grad():
        greedy = model.generate(ids, max_new_tokens=12, do_sample=False, min_new_tokens=12)
    assert greedy.tolist() == objective.model.generate(ids, 12, temperature=0.0).tolist()

    reloaded = load_objective(tmp_path / "hf")
    assert isinstance(reloaded, CausalLM)
    assert reloaded.special_tokens == objective.special_tokens
    with torch.no_grad():
        assert (reloaded.model(ids) - ours).abs().max().item() <= 1e-6


@pytest.mark.parametrize(
    ("model", "overrides", "objective_class", "architecture"),
    [
        ("bert-rope", [], MaskedLM, "EuroBertForMaskedLM"),
        ("t5", ["model.backbone.position=relative_bias", "model.backbone.n_decoder_layer=2"], SpanCorruption, "T5"),
    ],
)
def test_masked_lm_and_span_corruption_checkpoints_export(
    trained, tmp_path: Path, model: str, overrides: list[str], objective_class: type, architecture: str
) -> None:
    ckpt = trained(model, *overrides)
    adapter = export_checkpoint(ckpt, tmp_path / "hf")
    assert adapter.architecture.startswith(architecture)
    hf_model = getattr(transformers, adapter.auto_class).from_pretrained(tmp_path / "hf").eval()
    objective = checkpoint.load_objective(ckpt).eval()
    ids = torch.tensor([checkpoint.load_tokenizer(ckpt).encode(TEXT).ids])
    with torch.no_grad():
        if objective_class is SpanCorruption:
            decoder_ids = ids[:, :7]
            ours = objective.model(ids, decoder_ids)
            theirs = hf_model(input_ids=ids, decoder_input_ids=decoder_ids).logits
        else:
            ours, theirs = objective.model(ids), hf_model(input_ids=ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert isinstance(load_objective(tmp_path / "hf"), objective_class)


def test_cli_names_the_options_to_change_when_no_class_matches(trained, tmp_path: Path) -> None:
    ckpt = trained("bert")  # learned positions, LayerNorm, GELU: no transformers masked LM has exactly that
    result = run_export(f"ckpt_path={ckpt}", f"out_dir={tmp_path / 'hf'}", cwd=tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no transformers class matches"), result.stderr[-3000:]
    assert "model.backbone.position=rope model.backbone.norm=rmsnorm model.backbone.mlp=swiglu" in last
    assert not (tmp_path / "hf").exists()


def test_export_asks_for_its_settings() -> None:
    with pytest.raises(
        ConfigError, match=r"^pass the checkpoint and the directory to write: ckpt_path=PATH out_dir=DIR$"
    ):
        export(compose_config("export", "ckpt_path=last.ckpt"))
