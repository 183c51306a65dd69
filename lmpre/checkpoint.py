"""Checkpoints: how they are written, what they record, and how a run finds and checks the one it resumes.

The only code that knows the layout. A run directory's `checkpoints/` holds

    last.ckpt              the latest state: written at every validation and when SIGINT/SIGTERM stop a run
    step…-loss….ckpt       the best by val/loss
    tokenizer.json         copies of the run's tokenizer and of its prepared data's manifest, so the checkpoints
    manifest.json          stand alone once the prepared data is gone

A checkpoint is Lightning's (weights, optimizer, schedule, loop counters, the data stream's position) plus
`RECORD_KEY`: what it belongs to (objective class, backbone, window, tokenizer hash, prepared data key), written by
`PretrainingObjective.on_save_checkpoint`. An FSDP checkpoint is a directory of torch.distributed.checkpoint shards
with Lightning's `meta.pt`; `python -m lmpre.checkpoint consolidate DIR FILE` makes one file of its weights.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lmpre.errors import CheckpointError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from lmpre.objectives import PretrainingObjective

log = logging.getLogger(__name__)

RECORD_KEY = "lmpre"
RECORD_VERSION = 1
SUFFIX = ".ckpt"
SHARDED_METADATA = "meta.pt"  # Lightning's non-tensor state inside a sharded checkpoint directory
RUN_FILES = ("tokenizer.json", "manifest.json")
# Fields that may change when a run continues: they do not change what the weights mean.
RESUMABLE_BACKBONE_CHANGES = {"dropout"}
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # what `atomic_write` names its temporary files


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what open() would give a new file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, but a checkpoint under its final name is always complete.

    Lightning's own writes the whole checkpoint to a temporary file in the system's temporary directory and then
    moves it: across filesystems that move is a copy, so a kill leaves a truncated file under the final name (and
    each kill leaves a temporary file behind). Here the temporary file is beside its target, flushed to disk and
    renamed over it, which is atomic on every local filesystem.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        if "://" in str(path):  # object stores (s3://…) replace an object in one put: atomic already
            super().save_checkpoint(checkpoint, path)
            return
        atomic_write(Path(path), lambda file: torch.save(checkpoint, file))


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write` on a temporary file beside `path`, flush it to disk and rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        Path(temporary).chmod(_FILE_MODE)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself reaches the disk with its directory
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def remove_temporaries(directory: Path) -> list[Path]:
    """Delete what `atomic_write` left in `directory` when a process was killed mid-write; returns them."""
    removed = []
    for path in directory.glob(".*.tmp") if directory.is_dir() else []:
        if _TEMPORARY.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------------- what it records


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def run_record(model: PretrainingObjective, datamodule: Any = None) -> dict[str, Any]:
    """What a checkpoint of `model` trained on `datamodule` belongs to (plain containers: loads with weights_only)."""
    record: dict[str, Any] = {
        "version": RECORD_VERSION,
        "objective": class_path(type(model)),
        "backbone": asdict(model.config),
    }
    if datamodule is not None and hasattr(type(datamodule), "provenance"):
        provenance = datamodule.provenance
        record |= {
            "seq_len": int(datamodule.seq_len),
            "window": int(datamodule.window),
            "tokenizer_sha256": str(provenance["tokenizer_sha256"]),
            "data_key": str(provenance["data_key"]),
            "prepared_dir": str(provenance["prepared_dir"]),
        }
    return record


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """How `current` (this run) differs from `recorded` (a checkpoint), in the words of the settings to change.

    Only what both hold is compared: before the data is prepared the tokenizer is not known yet."""

    def both(key: str) -> bool:
        return key in recorded and key in current and recorded[key] != current[key]

    found = []
    if both("objective"):
        found.append(f"model: {_short(recorded['objective'])} in the checkpoint, {_short(current['objective'])} now")
    old, new = recorded.get("backbone") or {}, current.get("backbone") or {}
    for field in sorted(old.keys() & new.keys() - RESUMABLE_BACKBONE_CHANGES):
        if old[field] != new[field]:
            found.append(f"model.backbone.{field}: {old[field]} in the checkpoint, {new[field]} now")
    if both("seq_len"):
        found.append(f"data.seq_len: {recorded['seq_len']} in the checkpoint, {current['seq_len']} now")
    elif both("window"):
        found.append(f"window: {recorded['window']} tokens in the checkpoint, {current['window']} now")
    if both("tokenizer_sha256"):
        found.append(
            f"tokenizer: sha256 {recorded['tokenizer_sha256'][:12]}… in the checkpoint, "
            f"{current['tokenizer_sha256'][:12]}… now (data.tokenizer or the text it was trained on changed)"
        )
    if both("data_key"):
        found.append(
            f"prepared data: {recorded['data_key']} in the checkpoint ({recorded.get('prepared_dir', '?')}), "
            f"{current['data_key']} now (the data settings or source files changed)"
        )
    return found


def check_matches(checkpoint: Path, recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> None:
    """Raise naming every difference between a checkpoint's record and this run; warn when it has none."""
    if recorded is None:
        log.warning(
            "%s records no run (made before lmpre checked checkpoints): not checked against this run", checkpoint
        )
        return
    found = differences(recorded, current)
    if found:
        raise CheckpointError(
            f"{checkpoint} belongs to another run: {'; '.join(found)}. Resume it with its own settings, "
            "or start a new run in another directory (hydra.run.dir=DIR)."
        )


def _short(objective: str) -> str:
    return objective.rsplit(".", 1)[-1]


# ----------------------------------------------------------------------------------------------- reading and finding


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    record: dict[str, Any] | None
    sharded: bool  # an FSDP checkpoint directory

    @property
    def objective(self) -> str | None:
        return None if self.record is None else str(self.record["objective"])


def is_sharded(path: Path) -> bool:
    return path.is_dir() and (path / SHARDED_METADATA).is_file()


def inspect(path: Path, *, setting: str = "ckpt_path", sharded_ok: bool = False) -> CheckpointInfo:
    """What the checkpoint at `path` holds, read cheaply (tensors memory-mapped, not loaded); a clear error when
    it cannot be used."""
    if not path.exists():
        raise CheckpointError(
            f"{setting}={path} does not exist: pass the path of a checkpoint, e.g. RUN/checkpoints/last.ckpt"
        )
    if path.is_dir():
        if not is_sharded(path):
            raise CheckpointError(f"{setting}={path} is a directory, not a checkpoint: pass a .ckpt file inside it")
        if not sharded_ok:
            raise CheckpointError(
                f"{setting}={path} is a sharded (FSDP) checkpoint directory: resume it with trainer=fsdp, or make "
                f"one file of its weights: python -m lmpre.checkpoint consolidate {path} {path.parent}/full.ckpt"
            )
        content = _load(path / SHARDED_METADATA, setting)
    else:
        if path.stat().st_size == 0:
            raise CheckpointError(
                f"{setting}={path} is empty (0 bytes): a save was interrupted; use another checkpoint"
            )
        content = _load(path, setting)
    if not isinstance(content, dict) or "global_step" not in content:
        raise CheckpointError(f"{setting}={path} is not a Lightning checkpoint (no global_step in it)")
    record = content.get(RECORD_KEY)
    return CheckpointInfo(path, int(content["global_step"]), record, path.is_dir())


def _load(path: Path, setting: str) -> Any:
    try:
        try:
            return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except pickle.UnpicklingError:  # objects weights_only does not allow (e.g. a callback's state): as Lightning
            return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:  # truncated zip, not a zip, unpicklable: all mean "cannot be used"
        size = path.stat().st_size
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"{setting}={path} cannot be read ({size:,} bytes, truncated or not a checkpoint: "
            f"{type(err).__name__}: {first_line}); use another checkpoint"
        ) from None


def candidates(directory: Path) -> list[Path]:
    """The checkpoints in `directory` (files and sharded directories named *.ckpt), unchecked."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob(f"*{SUFFIX}") if p.is_file() or is_sharded(p))


def latest(directory: Path, *, sharded_ok: bool = False) -> CheckpointInfo | None:
    """The newest checkpoint in `directory` that loads (highest step, then newest file), or None; checkpoints that
    do not load are skipped with a warning."""
    found = []
    for path in candidates(directory):
        try:
            found.append((inspect(path, setting="checkpoint", sharded_ok=sharded_ok), path.stat().st_mtime))
        except CheckpointError as err:
            log.warning("skipping %s", err)
    if not found:
        return None
    return max(found, key=lambda item: (item[0].step, item[1], item[0].path.name == f"last{SUFFIX}"))[0]


def save_run_files(directory: Path, tokenizer: Path, manifest: Mapping[str, Any]) -> None:
    """Copy the tokenizer and the prepared data's manifest (as the run read it) beside the checkpoints."""
    contents = {RUN_FILES[0]: tokenizer.read_bytes(), RUN_FILES[1]: json.dumps(manifest, indent=2).encode()}
    for name, content in contents.items():
        target = directory / name
        if not (target.is_file() and target.read_bytes() == content):
            atomic_write(target, lambda file, content=content: file.write(content))  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------ loading elsewhere


def objective_class(path: Path, record: Mapping[str, Any] | None = None) -> type[PretrainingObjective]:
    """The objective class a checkpoint was saved from."""
    from hydra.utils import get_class

    from lmpre.objectives import PretrainingObjective

    record = inspect(path, setting="checkpoint").record if record is None else record
    if record is None:
        raise CheckpointError(
            f"{path} records no objective (made before lmpre recorded one): load it with the class it was "
            "trained with, e.g. CausalLM.load_from_checkpoint(path)"
        )
    cls = get_class(str(record["objective"]))
    if not issubclass(cls, PretrainingObjective):
        raise CheckpointError(f"{path} records {record['objective']}, which is not an lmpre objective")
    return cls


def load_objective(path: str | Path, map_location: Any = "cpu") -> PretrainingObjective:
    """Rebuild the trained objective from a checkpoint alone (its class, backbone and tokens are recorded)."""
    path = Path(path)
    return objective_class(path).load_from_checkpoint(path, map_location=map_location)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer saved beside a checkpoint, checked against the hash the checkpoint records."""
    import hashlib

    from tokenizers import Tokenizer

    path = Path(path)
    file = path.parent / RUN_FILES[0]
    if not file.is_file():
        raise CheckpointError(f"no {file.name} beside {path}: copy the run's prepared tokenizer.json there")
    record = inspect(path, setting="checkpoint", sharded_ok=True).record or {}
    expected = record.get("tokenizer_sha256")
    if expected and hashlib.sha256(file.read_bytes()).hexdigest() != expected:
        raise CheckpointError(f"{file} is not the tokenizer {path} was trained with (sha256 differs)")
    return Tokenizer.from_file(str(file))


def consolidate(directory: Path, output: Path) -> Path:
    """One checkpoint file with the full weights of a sharded (FSDP) checkpoint directory, for `load_objective`
    and `load_from_checkpoint` without FSDP. Optimizer states stay behind: continue training from the directory."""
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    inspect(directory, sharded_ok=True)
    checkpoint = _load_distributed_checkpoint(directory)
    for key in [k for k in checkpoint if re.fullmatch(r"optimizer_\d+", k)]:
        del checkpoint[key]
    checkpoint["optimizer_states"] = []
    checkpoint["lr_schedulers"] = []
    if isinstance(checkpoint.get(RECORD_KEY), dict):
        checkpoint[RECORD_KEY]["consolidated_from"] = str(directory)
    atomic_write(output, lambda file: torch.save(checkpoint, file))
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lmpre.checkpoint", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="what a checkpoint holds and which run it belongs to")
    show.add_argument("path", type=Path)
    merge = commands.add_parser("consolidate", help="one file of an FSDP checkpoint directory's weights")
    merge.add_argument("directory", type=Path)
    merge.add_argument("output", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "show":
            info = inspect(args.path, setting="checkpoint", sharded_ok=True)
            print(
                json.dumps(
                    {"path": str(info.path), "step": info.step, "sharded": info.sharded, "record": info.record},
                    indent=2,
                )
            )
        else:
            print(consolidate(args.directory, args.output))
    except CheckpointError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
