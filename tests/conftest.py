from pathlib import Path

import pytest

from lmpre.data import DataConfig, prepare_dataset
from lmpre.data.sources.wikitext import DEFAULT_SPLITS


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real corpora in ../shared/data beside the repository (see its README)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real corpora not found at {path}: tests on real text need ../shared/data beside the repo")
    return path


@pytest.fixture(scope="session")
def wikitext_config(shared_data: Path) -> DataConfig:
    """WikiText-2 with wiki.test.raw as train (there is no train file) and a 512-token vocabulary."""
    return DataConfig(
        source=str(shared_data / "wikitext-2-raw"),
        splits={**DEFAULT_SPLITS, "train": "wiki.test.raw"},
        format="wikitext",
        vocab_size=512,
        hub_repo="Salesforce/wikitext",
        hub_config="wikitext-103-raw-v1",
    )


@pytest.fixture(scope="session")
def prepared_wikitext(wikitext_config: DataConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`wikitext_config` prepared once per session. Reuse it with the same config, e.g.
    `TokenDataModule(**asdict(wikitext_config), output_dir=str(prepared_wikitext))`."""
    tmp = tmp_path_factory.mktemp("prepared")
    return prepare_dataset(wikitext_config, cache_dir=tmp / "cache", output_dir=tmp / "wikitext-2")


@pytest.fixture(scope="session")
def wikitext_overrides(wikitext_config: DataConfig, prepared_wikitext: Path) -> list[str]:
    """Hydra overrides that point `data=wiki` at the session's prepared WikiText-2."""
    return [
        f"data.source={wikitext_config.source}",
        f"data.splits.train={wikitext_config.splits['train']}",
        f"data.vocab_size={wikitext_config.vocab_size}",
        f"data.output_dir={prepared_wikitext}",
    ]
