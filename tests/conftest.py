from pathlib import Path

import pytest
from hydra_configs import compose_config

from lmpre.data import TokenDataModule
from lmpre.data.corpora import bundled

# data=wiki (the bundled WikiText-2) with a 512-token vocabulary: seconds to prepare, real text throughout.
WIKI = ["data=wiki", "data.tokenizer.vocab_size=512"]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The larger corpora in ../shared/data beside the repository (see its README); tests that need them skip
    without it. The bundled corpora (lmpre.data.corpora) serve every other test."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"larger corpora not found at {path}: this test needs ../shared/data beside the repo")
    return path


@pytest.fixture(scope="session")
def wikitext_raw() -> Path:
    """The bundled WikiText-2 raw files (xz-compressed)."""
    return bundled("wikitext-2-raw")


@pytest.fixture(scope="session")
def wikitext_overrides(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Hydra overrides that point `data=wiki` at a preparation made once per session."""
    tmp = tmp_path_factory.mktemp("prepared")
    return [*WIKI, f"data.cache_dir={tmp / 'cache'}", f"data.output_dir={tmp / 'wiki'}"]


@pytest.fixture(scope="session")
def wiki_data(wikitext_overrides: list[str]) -> TokenDataModule:
    """The session's prepared `data=wiki`, as the training entry point builds it."""
    from hydra.utils import instantiate

    datamodule: TokenDataModule = instantiate(compose_config("train", *wikitext_overrides).data)
    datamodule.prepare_data()
    return datamodule


@pytest.fixture(scope="session")
def prepared_wikitext(wiki_data: TokenDataModule) -> Path:
    return wiki_data.prepared_dir
