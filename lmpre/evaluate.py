"""Evaluate a checkpoint: `python -m lmpre.evaluate ckpt_path=RUN/checkpoints/last.ckpt [split=val|test]
[texts=[FILE,…]] [data=… overrides]`.

The model and its tokenizer come from the checkpoint, the data config from the checkpoint's run (its
`.hydra/config.yaml`) unless `data=` names one, with the checkpoint's `data.seq_len`. Every window of the split is
scored (lmpre.evaluation), with seeded corruption for the masked LM and span corruption, and so is each raw text
file in `texts`, tokenized with the checkpoint's tokenizer. Prints a table and writes the numbers as JSON beside the
checkpoint (`out=PATH` moves it).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from lmpre import checkpoint, evaluation
from lmpre.data.sources.base import read_compressed
from lmpre.data.sources.text import TextFiles
from lmpre.errors import CheckpointError, ConfigError, DataError, LmpreError
from lmpre.evaluation import CHAR_BLOCK, Scores
from lmpre.objectives import CausalLM, PretrainingObjective

log = logging.getLogger(__name__)

SPLITS = ("val", "test")
FALLBACK_DATA = "wiki"  # the data config when the checkpoint's run config is not found


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score the checkpoint `cfg.ckpt_path` names on its split and text files; returns the report (JSON-ready)."""
    if not cfg.get("ckpt_path"):
        raise ConfigError(
            "ckpt_path is not set: pass the checkpoint to evaluate, e.g. ckpt_path=RUN/checkpoints/last.ckpt"
        )
    path = Path(str(cfg.ckpt_path)).expanduser()
    split = cfg.get("split")
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split={split} is not one of {', '.join(SPLITS)} (or null: only the texts)")
    texts = text_files(cfg.get("texts"))
    if split is None and not texts:
        raise ConfigError("split=null and no texts: nothing to evaluate (set split=val or texts=[FILE,…])")
    info = checkpoint.inspect(path)
    record = info.record or {}
    if "seq_len" not in record:
        raise CheckpointError(
            f"{path} records no data.seq_len (made before lmpre recorded its run): cannot evaluate it"
        )
    seq_len = int(record["seq_len"])
    device = _device(str(cfg.get("device", "auto")))
    objective = checkpoint.load_objective(path, map_location=device).to(device).eval()
    batch_size = int(cfg.batch_size)
    seed = int(cfg.seed)
    report: dict[str, Any] = {
        "checkpoint": str(path),
        "step": info.step,
        "objective": type(objective).__name__,
        "seq_len": seq_len,
        "window": objective.window_length(seq_len),
        "batch_size": batch_size,
        "seed": seed,
        "device": str(device),
    }
    if split is not None:
        report |= evaluate_split(cfg, path, record, objective, split)
    if texts:
        tokenizer = checkpoint.load_tokenizer(path)
        report["texts"] = {}
        for file in texts:
            text = read_text(file)
            ids = tokenizer.encode(text, add_special_tokens=False).ids
            scores = evaluation.score_document(objective, ids, seq_len, batch_size=batch_size, seed=seed, device=device)
            num_bytes = len(text.encode())
            causal = isinstance(objective, CausalLM)
            report["texts"][str(file)] = {
                "characters": len(text),
                "bytes": num_bytes,
                **scores.metrics(num_bytes if causal else None),
            }
    return report


def evaluate_split(
    cfg: DictConfig, path: Path, record: dict[str, Any], objective: PretrainingObjective, split: str
) -> dict[str, Any]:
    """Every window of the split of the prepared data (prepared here if missing), as training validates."""
    data, origin = data_config(cfg, path)
    if data.get("seq_len") != record["seq_len"]:
        log.info("data.seq_len=%s: the checkpoint's (%s in the data config)", record["seq_len"], data.get("seq_len"))
    data.seq_len = int(record["seq_len"])
    try:
        datamodule = instantiate(data)
    except OmegaConfBaseException as err:
        raise ConfigError(f"the data config ({origin}) does not resolve: {err}; pass data=NAME instead") from None
    except InstantiationException as err:  # the data module's own error says what to change
        if isinstance(err.__cause__, LmpreError):
            raise err.__cause__ from None
        raise
    datamodule.check()
    datamodule.prepare_data()
    manifest = datamodule.manifest
    evaluation.check_tokenizer(path, record, manifest, f"{datamodule.prepared_dir} ({origin})")
    if manifest["key"] != record.get("data_key"):
        log.info("evaluating on other prepared data than the checkpoint's run read (%s)", datamodule.prepared_dir)
    window = objective.window_length(int(record["seq_len"]))
    names = list(manifest["sources"])
    batches = evaluation.split_batches(datamodule.prepared_dir, manifest, split, window, int(cfg.batch_size))
    device = objective.device
    per_source = evaluation.score_batches(objective, batches, seed=int(cfg.seed), name=split, device=device)
    if not per_source:
        tokens = manifest["splits"][split]["tokens"]
        raise DataError(
            f"The {split} split has {tokens} tokens, fewer than one window of {window}: evaluate another split, "
            "or prepare data with more text in it"
        )
    causal = isinstance(objective, CausalLM)

    def metrics(scores: Scores, facts: dict[str, Any]) -> dict[str, float | int]:
        bytes_per_token = facts["bytes"] / facts["tokens"] if facts["tokens"] else 0.0
        return scores.metrics(scores.tokens * bytes_per_token if causal else None)

    total = Scores()
    for scores in per_source.values():
        total.add(scores)
    found: dict[str, Any] = {
        "data": {"config": origin, "prepared_dir": str(datamodule.prepared_dir), "key": manifest["key"]},
        "split": {"name": split, **metrics(total, manifest["splits"][split])},
    }
    if len(names) > 1:
        found["split"]["sources"] = {
            name: metrics(per_source[name], manifest["sources"][name]["splits"][split])
            for name in names
            if name in per_source
        }
    facts = manifest["splits"][split]
    if causal and facts["tokens"] == facts["bytes"] + facts["documents"]:  # one token per byte, one per document end
        found["chars"] = score_chars(cfg, objective, datamodule.prepared_dir, manifest, split)
    return found


def score_chars(
    cfg: DictConfig, objective: PretrainingObjective, prepared_dir: Path, manifest: dict[str, Any], split: str
) -> dict[str, Any]:
    """With one token per byte (data where tokens = bytes + document ends): mean cross-entropy in nats per byte, a
    character of ASCII text, over the whole split cut into non-overlapping blocks of 64, block i predicting characters
    64i+1 … 64i+64, each from the characters of block i before it (issue 10's metric, nanoGPT's on Tiny Shakespeare)."""
    if objective.config.max_seq_len < CHAR_BLOCK:
        return {"skipped": f"model.backbone.max_seq_len={objective.config.max_seq_len} < {CHAR_BLOCK}"}
    stream = evaluation.split_tokens(prepared_dir, manifest, split)
    scores = evaluation.score_blocks(objective, stream, batch_size=int(cfg.batch_size), device=objective.device)
    return {"block": CHAR_BLOCK, "blocks": scores.windows, "characters": scores.tokens, "loss": scores.loss}


def data_config(cfg: DictConfig, path: Path) -> tuple[DictConfig, str]:
    """The data config to evaluate on, and where it comes from: `data=` when given; else the checkpoint's run's
    (RUN/.hydra/config.yaml beside RUN/checkpoints/); else data=wiki. Interpolations resolve against `cfg`."""
    if cfg.get("data") is not None:
        return cfg.data, "data="
    run_config = path.resolve().parent.parent / ".hydra" / "config.yaml"
    data: Any = None
    origin = str(run_config)
    if run_config.is_file():
        loaded = OmegaConf.load(run_config)
        data = loaded.get("data") if isinstance(loaded, DictConfig) else None
    if data is None:
        log.warning("no run config with a data config at %s: evaluating on data=%s", run_config, FALLBACK_DATA)
        data, origin = _compose_data(FALLBACK_DATA), f"data={FALLBACK_DATA}"
    with open_dict(cfg):
        cfg.data = data
    return cfg.data, origin


def _compose_data(name: str) -> DictConfig:
    overrides = [f"data={name}"]
    data: DictConfig
    if GlobalHydra.instance().is_initialized():  # inside the entry point
        data = hydra.compose(config_name="evaluate", overrides=overrides).data
    else:
        with hydra.initialize_config_module(config_module="lmpre.conf", version_base="1.3"):
            data = hydra.compose(config_name="evaluate", overrides=overrides).data
    return data


def text_files(texts: Any) -> list[Path]:
    """The files `texts` names: paths, globs, or directories (their *.txt files, also compressed)."""
    if texts is None:
        return []
    entries = [str(t) for t in texts] if isinstance(texts, (list, tuple, ListConfig)) else [str(texts)]
    files: list[Path] = []
    for entry in entries:
        expanded = str(Path(entry).expanduser())
        if any(c in expanded for c in "*?["):
            anchor = Path(expanded).anchor or "."
            pattern = str(Path(expanded).relative_to(anchor)) if Path(expanded).is_absolute() else expanded
            matches = sorted(p for p in Path(anchor).glob(pattern) if p.is_file())
            if not matches:
                raise DataError(f"texts: {entry} matches no file")
            files += matches
        elif Path(expanded).is_dir():
            matches = sorted(p for pattern in TextFiles.patterns for p in Path(expanded).rglob(pattern) if p.is_file())
            if not matches:
                raise DataError(f"texts: {entry} is a directory with no {', '.join(TextFiles.patterns)} files")
            files += matches
        elif Path(expanded).is_file():
            files.append(Path(expanded))
        else:
            raise DataError(f"texts: {entry} does not exist: pass text files, globs or directories")
    return files


def read_text(file: Path) -> str:
    """A text file (plain or .gz/.bz2/.xz/.zst) as the text source reads one: UTF-8, no BOM, \\n line ends."""
    data = read_compressed(file, "texts")
    try:
        text = data.decode()
    except UnicodeDecodeError as err:
        raise DataError(f"texts: {file} is not UTF-8 text ({err})") from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name} is not a device: auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} needs a CUDA GPU, and torch finds none: use device=cpu")
    return device


# ------------------------------------------------------------------------------------------------------ output


def default_out(report: dict[str, Any]) -> Path:
    """Beside the checkpoint: RUN/checkpoints/last.ckpt -> RUN/checkpoints/last.eval-val.json (or -test, -texts)."""
    path = Path(report["checkpoint"])
    return path.with_name(f"{path.stem}.eval-{report.get('split', {}).get('name', 'texts')}.json")


def write_report(report: dict[str, Any], out: Path) -> None:
    content = (json.dumps(report, indent=2) + "\n").encode()
    try:
        checkpoint.atomic_write(out, lambda file: file.write(content))
    except OSError as err:
        raise ConfigError(f"cannot write the report to {out} ({err.strerror or err}): pass out=PATH") from None


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    caption = [f"{report['checkpoint']}, step {report['step']}"]
    if "data" in report:
        caption.append(f"data: {report['data']['config']}")
    table = Table(title=f"{report['objective']}: loss in nats per scored token", caption="\n".join(caption))
    rows: list[tuple[str, dict[str, Any]]] = []
    if "split" in report:
        rows.append((report["split"]["name"], report["split"]))
        rows += [(f"  {name}", metrics) for name, metrics in report["split"].get("sources", {}).items()]
    if "chars" in report and "loss" in report["chars"]:
        chars = report["chars"]
        metrics = {"windows": chars["blocks"], "tokens": chars["characters"], "loss": chars["loss"]}
        rows.append((f"{report['split']['name']}, {chars['block']}-char blocks", metrics))
    rows += [(Path(name).name, metrics) for name, metrics in report.get("texts", {}).items()]
    columns = [c for c in ("windows", "tokens", "loss", "ppl", "acc", "bpb") if any(c in m for _, m in rows)]
    table.add_column("scored")
    for column in columns:
        table.add_column(column, justify="right")
    for name, metrics in rows:
        table.add_row(name, *(_cell(metrics.get(column)) for column in columns))
    Console().print(table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return f"{value:,}"


# ---------------------------------------------------------------------------------------------------- entry point


@hydra.main(version_base="1.3", config_path="pkg://lmpre.conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        report = evaluate(cfg)
        out = Path(str(cfg.out)).expanduser() if cfg.get("out") else default_out(report)
        write_report(report, out)
    except (LmpreError, InstantiationException) as err:  # a setting or input to fix, not a bug: no traceback
        _report(f"error: {err}")
        raise SystemExit(1) from None
    print_table(report)
    print(f"wrote {out}")


def _report(line: str) -> None:
    """One line for the user on stderr, and in the run's evaluate.log."""
    print(line, file=sys.stderr)
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, line, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


if __name__ == "__main__":
    main()
