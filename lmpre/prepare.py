"""Prepare a dataset ahead of training: python -m lmpre.prepare data=wiki [data.source=PATH] [data.output_dir=DIR].

Prints what was read, what each filter removed and what was kept, per source and split.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from lmpre.errors import LmpreError


def report(manifest: dict[str, Any], console: Console) -> None:
    """The cleaning report of a manifest, one table per source."""
    for name, facts in manifest["sources"].items():
        counts = facts["report"]
        table = Table(
            title=f"source {name!r}: {counts.get('read.documents', 0):,} documents read "
            f"({counts.get('read.bytes', 0) / 1e6:,.1f} MB)",
            title_justify="left",
        )
        table.add_column("")
        table.add_column("documents", justify="right")
        table.add_column("MB", justify="right")
        table.add_column("tokens", justify="right")
        for reason, count in counts.items():
            if reason.startswith(("removed.", "skipped.", "replaced.")) and count:
                table.add_row(reason, f"{count:,}", "", "")
        for split, stats in facts["splits"].items():
            table.add_row(
                f"kept: {split}", f"{stats['documents']:,}", f"{stats['bytes'] / 1e6:,.2f}", f"{stats['tokens']:,}"
            )
        console.print(table)


@hydra.main(version_base="1.3", config_path="pkg://lmpre.conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        datamodule = hydra.utils.instantiate(cfg.data)
        datamodule.prepare_data()
    except (LmpreError, InstantiationException) as err:
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        print(
            "interrupted: nothing was left that looks complete; run the same command again to prepare", file=sys.stderr
        )
        raise SystemExit(130) from None
    manifest = datamodule.manifest
    console = Console()
    report(manifest, console)
    console.print(f"vocab size: {manifest['tokenizer']['vocab_size']} ({manifest['dtype']} tokens)")
    console.print(f"prepared data: {datamodule.prepared_dir}")
    if datamodule.shards_root != str(datamodule.prepared_dir):
        console.print(f"published to: {datamodule.shards_root} (training streams it from there)")


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    print("terminated: nothing was left that looks complete; run the same command again to prepare", file=sys.stderr)
    raise SystemExit(143)


if __name__ == "__main__":
    main()
