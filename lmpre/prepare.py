"""Prepare a dataset ahead of training: python -m lmpre.prepare data=wiki [data.source=DIR] [data.output_dir=DIR]."""

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from lmpre.errors import LmpreError


@hydra.main(version_base="1.3", config_path="pkg://lmpre.conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    try:
        datamodule = hydra.utils.instantiate(cfg.data)
        datamodule.prepare_data()
    except (LmpreError, InstantiationException) as err:
        raise SystemExit(f"error: {err}") from None
    manifest = datamodule.manifest
    print(f"prepared data: {datamodule.prepared_dir}")
    print(f"vocab size: {manifest['tokenizer']['vocab_size']} ({manifest['dtype']} tokens)")
    for split, stats in manifest["splits"].items():
        print(
            f"{split}: {stats['documents']:,} documents, {stats['tokens']:,} tokens, {stats['bytes']:,} bytes "
            f"({stats['bytes'] / stats['tokens']:.2f} bytes/token)"
        )


if __name__ == "__main__":
    main()
