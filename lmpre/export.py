"""Take a trained model into the Hugging Face ecosystem: `python -m lmpre.export ckpt_path=PATH out_dir=DIR`.

DIR then loads with transformers' Auto classes (the family is chosen from the backbone, lmpre.hf) and with
`load_objective(DIR)` back into lmpre. Wiring only: the weight maps are in lmpre.hf.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lmpre import checkpoint, hf
from lmpre.errors import ConfigError, LmpreError
from lmpre.objectives import CausalLM, MaskedLM, PretrainingObjective, SpanCorruption

OBJECTIVES: dict[str, type[PretrainingObjective]] = {
    "causal": CausalLM,
    "masked": MaskedLM,
    "seq2seq": SpanCorruption,
}


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path) -> hf.Adapter:
    """Export the checkpoint at `ckpt_path` (with the tokenizer beside it) into `out_dir`; the family used."""
    path = Path(ckpt_path)
    objective = checkpoint.load_objective(path)
    return hf.export(objective.model, checkpoint.load_tokenizer(path), objective.special_tokens, out_dir)


def load_objective(out_dir: str | Path) -> PretrainingObjective:
    """The objective of an export (its class follows from the backbone), with the exported weights, in eval mode.

    Its other settings (masking rates, noise density, optimizer) are the objective's defaults."""
    config, state = hf.load(out_dir)
    objective = OBJECTIVES[hf.task_of(config)](config, special_tokens=hf.special_tokens(out_dir))
    objective.model.load_state_dict(state)
    return objective.eval()


def export(cfg: DictConfig) -> hf.Adapter:
    """What `python -m lmpre.export` does with its composed config (conf/export.yaml)."""
    if not cfg.get("ckpt_path") or not cfg.get("out_dir"):
        raise ConfigError("pass the checkpoint and the directory to write: ckpt_path=PATH out_dir=DIR")
    return export_checkpoint(str(cfg.ckpt_path), str(cfg.out_dir))


@hydra.main(version_base="1.3", config_path="pkg://lmpre.conf", config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        adapter = export(cfg)
    except LmpreError as err:
        raise SystemExit(f"error: {err}") from None
    print(
        f"exported {cfg.ckpt_path} as {adapter.architecture} to {cfg.out_dir}: load it with "
        f"transformers.{adapter.auto_class}.from_pretrained({str(cfg.out_dir)!r}) and AutoTokenizer",
        file=sys.stdout,
    )


if __name__ == "__main__":
    main()
