"""Each transformers family lmpre exports to gives our logits (fp32, max abs difference <= 1e-4) from random
weights, loads with the Auto classes and its tokenizer with AutoTokenizer, and loads back into lmpre."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer

from lmpre import hf
from lmpre.data.tokenizer import special_token_ids, train_tokenizer
from lmpre.errors import ConfigError
from lmpre.models import Transformer, TransformerConfig

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
SMALL = {"d_model": 64, "n_head": 4, "max_seq_len": 64, "norm_eps": 1e-5}
DECODER: dict[str, Any] = {**SMALL, "n_layer": 2, "causal": True}
ENCODER: dict[str, Any] = {**SMALL, "n_layer": 2, "causal": False}
ENCODER_DECODER: dict[str, Any] = {**SMALL, "n_layer": 2, "n_decoder_layer": 2, "causal": False}
GPT2 = {"position": "learned", "norm": "layernorm", "mlp": "gelu"}
LLAMA = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu"}
T5 = {"position": "relative_bias", "norm": "rmsnorm", "bias": False, "relative_attention_max_distance": 20}

CASES = {  # name: (backbone, transformers class)
    "gpt2": ({**DECODER, **GPT2}, "GPT2LMHeadModel"),
    "gpt2-no-bias-untied": ({**DECODER, **GPT2, "bias": False, "tie_embeddings": False}, "GPT2LMHeadModel"),
    "llama": ({**DECODER, **LLAMA, "bias": False}, "LlamaForCausalLM"),
    "llama-bias-untied": ({**DECODER, **LLAMA, "bias": True, "tie_embeddings": False}, "LlamaForCausalLM"),
    "gpt-neox": ({**DECODER, "position": "rope", "norm": "layernorm", "mlp": "gelu"}, "GPTNeoXForCausalLM"),
    "gpt-neox-no-bias-untied": (
        {**DECODER, "position": "rope", "norm": "layernorm", "mlp": "gelu", "bias": False, "tie_embeddings": False},
        "GPTNeoXForCausalLM",
    ),
    "eurobert": ({**ENCODER, **LLAMA, "bias": False}, "EuroBertForMaskedLM"),
    "eurobert-bias": ({**ENCODER, **LLAMA, "bias": True}, "EuroBertForMaskedLM"),
    "t5-gelu": ({**ENCODER_DECODER, **T5, "mlp": "gelu"}, "T5ForConditionalGeneration"),
    "t5-swiglu": ({**ENCODER_DECODER, **T5, "mlp": "swiglu"}, "T5ForConditionalGeneration"),
    "t5-untied": ({**ENCODER_DECODER, **T5, "mlp": "gelu", "tie_embeddings": False}, "T5ForConditionalGeneration"),
}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    text = "The history of the tokenizer: tokens, merges, and a vocabulary of bytes. " * 20
    return train_tokenizer([text], 400)


def random_model(backbone: dict[str, Any], vocab_size: int) -> Transformer:
    """Random weights everywhere, norms and biases included, so that a misplaced tensor shows in the logits."""
    if backbone["position"] == "relative_bias" and not hasattr(TransformerConfig, "relative_attention_num_buckets"):
        pytest.skip("the backbone has no position=relative_bias yet")
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=vocab_size, **backbone))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias") or "relative_bias" in name:
                p.copy_(0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def our_logits(model: Transformer, ids: torch.Tensor, decoder_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, decoder_ids if model.decoder is not None else None)


def their_logits(hf_model: Any, ids: torch.Tensor, decoder_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if hf_model.config.is_encoder_decoder:
            return hf_model(input_ids=ids, decoder_input_ids=decoder_ids).logits
        return hf_model(input_ids=ids).logits


@pytest.mark.parametrize("case", CASES)
def test_export_gives_our_logits_in_transformers(case: str, tokenizer: Tokenizer, tmp_path: Path) -> None:
    backbone, architecture = CASES[case]
    model = random_model(backbone, tokenizer.get_vocab_size())
    special = dict(special_token_ids(tokenizer))
    adapter = hf.export(model, tokenizer, special, tmp_path / "export")
    assert adapter.architecture == architecture

    auto = getattr(transformers, adapter.auto_class)
    hf_model = auto.from_pretrained(tmp_path / "export").eval()
    assert type(hf_model).__name__ == architecture
    generator = torch.Generator().manual_seed(1)
    # pad (id 1) is avoided: RoBERTa-like classes would treat it as padding
    ids = torch.randint(3, model.config.vocab_size, (2, 24), generator=generator)
    decoder_ids = torch.randint(3, model.config.vocab_size, (2, 9), generator=generator)
    ours, theirs = our_logits(model, ids, decoder_ids), their_logits(hf_model, ids, decoder_ids)
    difference = (ours - theirs).abs().max().item()
    print(f"{case}: {architecture} max abs logit difference {difference:.2e} (logits up to {ours.abs().max():.1f})")
    assert ours.shape == theirs.shape
    assert difference <= TOLERANCE

    # ... and back into lmpre: the same backbone, the same logits
    config, state = hf.load(tmp_path / "export")
    assert config == model.config
    assert state.keys() == model.state_dict().keys()
    reloaded = hf.load_model(tmp_path / "export")
    assert (our_logits(reloaded, ids, decoder_ids) - ours).abs().max().item() <= 1e-5


@pytest.mark.parametrize("case", ["gpt2-no-bias-untied", "eurobert", "t5-gelu"])
def test_lmpre_loads_an_export_transformers_saved_again(case: str, tokenizer: Tokenizer, tmp_path: Path) -> None:
    """As after fine-tuning in transformers: `save_pretrained` keeps the lmpre record in config.json."""
    model = random_model(CASES[case][0], tokenizer.get_vocab_size())
    adapter = hf.export(model, tokenizer, dict(special_token_ids(tokenizer)), tmp_path / "export")
    getattr(transformers, adapter.auto_class).from_pretrained(tmp_path / "export").save_pretrained(tmp_path / "again")
    ids = torch.randint(3, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    ours, again = our_logits(model, ids, ids[:, :9]), our_logits(hf.load_model(tmp_path / "again"), ids, ids[:, :9])
    assert (again - ours).abs().max().item() <= 1e-5


def test_tokenizer_loads_with_autotokenizer_with_its_special_tokens(tokenizer: Tokenizer, tmp_path: Path) -> None:
    model = random_model(CASES["gpt2"][0], tokenizer.get_vocab_size())
    hf.export(model, tokenizer, dict(special_token_ids(tokenizer)), tmp_path)
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "The history of merges: <|endoftext|> and <mask>, <extra_id_0>."
    assert loaded(text)["input_ids"] == tokenizer.encode(text).ids  # nothing added around the text
    assert loaded.decode(tokenizer.encode(text).ids) == text
    assert (loaded.eos_token, loaded.bos_token, loaded.pad_token, loaded.mask_token) == (
        "<|endoftext|>",
        "<|endoftext|>",
        "<pad>",
        "<mask>",
    )
    assert "<extra_id_99>" in loaded.all_special_tokens
    assert loaded.model_max_length == model.config.max_seq_len
    assert {"tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"} <= {
        p.name for p in tmp_path.iterdir()
    }


@pytest.mark.parametrize(
    ("backbone", "expected"),
    [
        ({**DECODER, "position": "rope", "norm": "rmsnorm", "mlp": "gelu"}, "model.backbone.mlp=swiglu"),
        ({**DECODER, "position": "learned", "norm": "rmsnorm", "mlp": "swiglu"}, "model.backbone.position=rope"),
        ({**ENCODER, **GPT2}, "model.backbone.position=rope model.backbone.norm=rmsnorm model.backbone.mlp=swiglu"),
        ({**ENCODER_DECODER, **LLAMA, "bias": True}, "model.backbone.position=relative_bias"),
    ],
)
def test_a_backbone_no_class_matches_is_one_line_naming_the_options(backbone: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match="no transformers class matches") as error:
        hf.adapter_for(TransformerConfig(vocab_size=400, **backbone))
    message = str(error.value)
    assert expected in message
    assert "\n" not in message


def test_export_refuses_a_directory_it_did_not_write(tokenizer: Tokenizer, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    model = random_model(CASES["llama"][0], tokenizer.get_vocab_size())
    with pytest.raises(ConfigError, match="not an lmpre export"):
        hf.export(model, tokenizer, dict(special_token_ids(tokenizer)), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    hf.export(model, tokenizer, dict(special_token_ids(tokenizer)), tmp_path / "out")
    hf.export(model, tokenizer, dict(special_token_ids(tokenizer)), tmp_path / "out")  # an earlier export: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "out"]  # no partial directory left


def test_lmpre_hf_imports_no_lightning_hydra_or_data() -> None:
    code = (
        "import sys, lmpre.hf; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'hydra', 'transformers') "
        "or m.startswith('lmpre.data')]; print(bad); assert not bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
