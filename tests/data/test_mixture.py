"""Several sources mixed by weight as training reads them: proportions drawn, exact resume."""

from collections import Counter
from itertools import islice
from pathlib import Path

import pytest
import torch

from lmpre.data import TokenDataModule
from lmpre.data.sources.text import TextFiles
from lmpre.data.sources.wikitext import WikiText


def mixture(tmp_path: Path) -> TokenDataModule:
    """The bundled WikiText-2 (70%) and Tiny Shakespeare (30%), one 512-token BPE for both."""
    dm = TokenDataModule(
        sources={
            "wiki": WikiText(weight=0.7),
            "play": TextFiles(
                bundled="tinyshakespeare", holdout="tail", val_fraction=0.1, test_fraction=0.0, weight=0.3
            ),
        },
        tokenizer={"vocab_size": 512},
        cache_dir=str(tmp_path / "cache"),
        seq_len=32,
        batch_size=16,
    )
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def shared_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mixture")


def test_both_sources_are_prepared_once_with_one_tokenizer(shared_tmp: Path) -> None:
    dm = mixture(shared_tmp)
    sources = dm.manifest["sources"]
    assert list(sources) == ["wiki", "play"]
    assert all(sources[name]["splits"]["train"]["tokens"] > 300_000 for name in sources)
    assert len(list((shared_tmp / "cache" / "documents").iterdir())) == 2
    assert mixture(shared_tmp).prepared_dir == dm.prepared_dir  # reused


def test_training_draws_the_sources_in_proportion(shared_tmp: Path) -> None:
    dm = mixture(shared_tmp)
    drawn = Counter(int(i) for batch in islice(dm.train_dataloader(), 200) for i in batch["source"])
    share = drawn[1] / sum(drawn.values())
    assert share == pytest.approx(0.3, abs=0.02)


def test_a_resumed_loader_continues_the_mixture_where_it_stopped(shared_tmp: Path) -> None:
    dm = mixture(shared_tmp)
    expected = list(islice(dm.train_dataloader(), 12))
    interrupted = dm.train_dataloader()
    assert len(list(islice(interrupted, 7))) == 7
    state = interrupted.state_dict()
    resumed_dm = mixture(shared_tmp)
    resumed = resumed_dm.train_dataloader()
    resumed.load_state_dict(state)
    for want, got in zip(expected[7:], islice(resumed, 5), strict=True):
        assert torch.equal(want["tokens"], got["tokens"])
        assert torch.equal(want["source"], got["source"])


def test_a_single_source_setting_is_refused_for_a_mixture(tmp_path: Path) -> None:
    from lmpre.errors import DataError

    with pytest.raises(DataError, match=r"mixes 2 sources: set data\.sources\.NAME\.path"):
        TokenDataModule(sources={"a": WikiText(), "b": WikiText()}, source=str(tmp_path))


def test_training_on_a_mixture_logs_the_shares_it_drew(tmp_path: Path) -> None:
    """data=wiki_books, with the bundled Tiny Shakespeare standing in for the books: 70/30 as trained."""
    from hydra_configs import compose_config
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_train import TINY

    from lmpre.train import train

    cfg = compose_config(
        "train",
        "data=wiki_books",
        "data.sources.books._target_=lmpre.data.sources.text.TextFiles",
        "+data.sources.books.bundled=tinyshakespeare",
        "+data.sources.books.holdout=tail",
        "data.tokenizer.vocab_size=512",
        f"data.cache_dir={tmp_path / 'cache'}",
        *TINY,
        "data.batch_size=16",
        "trainer.max_steps=101",
        "trainer.val_check_interval=101",
        f"paths.output_dir={tmp_path / 'run'}",
    )
    train(cfg)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    shares = {name: events.Scalars(f"data/share/{name}")[-1] for name in ("corpus", "books")}
    assert shares["corpus"].value == pytest.approx(0.7, abs=0.02)
    assert shares["books"].step == 100
    assert shares["books"].value == pytest.approx(0.3, abs=0.02)
