"""An export directory, as transformers' `from_pretrained` reads it and lmpre reads it back:

    config.json            the transformers config, plus `lmpre`: the backbone config and special token ids
    model.safetensors      the weights under transformers' names (a tied output layer is left to transformers)
    tokenizer.json         the run's tokenizer, with the tokenizer_config.json (special tokens, max length) that
                           `AutoTokenizer` reads

Writing it needs `transformers` (its config classes and `PreTrainedTokenizerFast`); reading it back does not.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from lmpre.errors import CheckpointError, ConfigError
from lmpre.hf.adapter import Adapter, StateDict, choose
from lmpre.hf.gpt2 import GPT2
from lmpre.hf.gpt_neox import GPTNeoX
from lmpre.hf.llama import EuroBert, Llama
from lmpre.hf.t5 import T5
from lmpre.models import Transformer, TransformerConfig

if TYPE_CHECKING:
    from tokenizers import Tokenizer

ADAPTERS: tuple[Adapter, ...] = (GPT2(), Llama(), GPTNeoX(), EuroBert(), T5())
CONFIG, WEIGHTS, WEIGHTS_INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
RECORD_KEY = "lmpre"  # in config.json: what lmpre needs to rebuild the backbone


def adapter_for(config: TransformerConfig) -> Adapter:
    """The transformers family `config` exports to; a ConfigError naming the options to change when none fits."""
    return choose(ADAPTERS, config)


def export(model: Transformer, tokenizer: Tokenizer, special_tokens: Mapping[str, Any], out_dir: str | Path) -> Adapter:
    """Write `model` with its tokenizer into `out_dir` for transformers' Auto classes; returns the family used.

    `out_dir` must be new, empty or an earlier export: it is written beside and renamed into place, so it never
    holds half an export."""
    config = model.config
    adapter = adapter_for(config)
    out_dir = Path(out_dir)
    _check_target(out_dir)
    transformers = _transformers()
    weights = adapter.to_hf({k: v.detach().cpu() for k, v in model.state_dict().items()}, config)
    hf_config = transformers.AutoConfig.for_model(adapter.model_type, **adapter.hf_config(config, special_tokens))
    hf_config.architectures = [adapter.architecture]
    hf_config.dtype = str(next(iter(weights.values())).dtype).removeprefix("torch.")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        hf_config.save_pretrained(partial)
        record = json.loads((partial / CONFIG).read_text())
        record[RECORD_KEY] = {"backbone": asdict(config), "special_tokens": dict(special_tokens)}
        (partial / CONFIG).write_text(json.dumps(record, indent=2) + "\n")
        _save_weights(weights, partial / WEIGHTS)
        _save_tokenizer(transformers, tokenizer, special_tokens, config, adapter, partial)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        partial.rename(out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return adapter


def _check_target(out_dir: Path) -> None:
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir()) and not _is_export(out_dir)):
        raise ConfigError(
            f"out_dir={out_dir} exists and is not an lmpre export: pass a new or empty directory "
            "(lmpre replaces only an earlier export)"
        )


def _is_export(directory: Path) -> bool:
    try:
        return RECORD_KEY in json.loads((directory / CONFIG).read_text())
    except (OSError, ValueError):
        return False


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "exporting to transformers needs the transformers package: pip install transformers safetensors"
        ) from None
    return transformers


def _save_weights(weights: StateDict, path: Path) -> None:
    from safetensors.torch import save_file

    # safetensors refuses tensors that share memory or are views: every tensor gets its own contiguous copy.
    save_file({k: v.contiguous().clone() for k, v in weights.items()}, str(path), metadata={"format": "pt"})


def _save_tokenizer(
    transformers: Any,
    tokenizer: Tokenizer,
    special_tokens: Mapping[str, Any],
    config: TransformerConfig,
    adapter: Adapter,
    directory: Path,
) -> None:
    def token(name: str) -> str | None:
        index = special_tokens.get(name)
        return None if index is None else tokenizer.id_to_token(int(index))

    named = {"eos_token": token("eot"), "pad_token": token("pad"), "mask_token": token("mask")}
    if adapter.task == "causal":
        named["bos_token"] = token("eot")  # as GPT-2: documents are separated, and may start, with end-of-text
    sentinels = [tokenizer.id_to_token(int(i)) for i in special_tokens.get("sentinels", [])]
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=config.max_seq_len,
        extra_special_tokens=sentinels,
        **{k: v for k, v in named.items() if v is not None},
    )
    fast.save_pretrained(directory)


# ------------------------------------------------------------------------------------------------- reading it back


def load(out_dir: str | Path) -> tuple[TransformerConfig, StateDict]:
    """The backbone config and state dict (keys as in `Transformer.state_dict()`) of an export, also after
    transformers saved it again (e.g. fine-tuned: `save_pretrained` keeps the `lmpre` record)."""
    directory = Path(out_dir)
    if not (directory / CONFIG).is_file():
        raise CheckpointError(f"{directory} holds no {CONFIG}: pass the out_dir of python -m lmpre.export")
    record = json.loads((directory / CONFIG).read_text()).get(RECORD_KEY)
    if not isinstance(record, dict):
        raise CheckpointError(f"{directory / CONFIG} records no lmpre backbone: it was not exported by lmpre")
    config = TransformerConfig(**record["backbone"])
    return config, adapter_for(config).from_hf(_load_weights(directory), config)


def load_model(out_dir: str | Path) -> Transformer:
    """The backbone of an export, with its weights, in eval mode."""
    config, state = load(out_dir)
    model = Transformer(config)
    model.load_state_dict(state)
    return model.eval()


def special_tokens(out_dir: str | Path) -> dict[str, Any]:
    """The special token ids an export records (eot, pad, mask, sentinels), as the objectives take them."""
    record: dict[str, Any] = json.loads((Path(out_dir) / CONFIG).read_text())[RECORD_KEY]
    return dict(record["special_tokens"])


def _load_weights(directory: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    index = directory / WEIGHTS_INDEX
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [WEIGHTS]
    weights: dict[str, Tensor] = {}
    for name in files:
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory / name} is missing: the export is incomplete")
        weights |= load_file(str(directory / name))
    return weights
