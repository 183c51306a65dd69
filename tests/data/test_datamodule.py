from collections.abc import Iterable
from itertools import islice
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from hydra_configs import compose_config

from lmpre.data import TokenDataModule
from lmpre.data.datamodule import window_offset
from lmpre.errors import DataError
from lmpre.evaluation import split_tokens


def datamodule(overrides: list[str], seq_len: int = 32) -> TokenDataModule:
    """`data=wiki` over the session's preparation, with small windows."""
    cfg = compose_config("train", *overrides, f"data.seq_len={seq_len}", "data.batch_size=4")
    dm: TokenDataModule = instantiate(cfg.data)
    return dm


def batches(dm: TokenDataModule, loader: Iterable[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """Batches as the model sees them: Lightning passes each through the datamodule's transfer hook."""
    return [dm.on_before_batch_transfer(batch, 0) for batch in loader]


def test_batches_are_long_windows_of_seq_len_plus_one(wikitext_overrides: list[str], prepared_wikitext: Path) -> None:
    dm = datamodule(wikitext_overrides)
    dm.prepare_data()
    dm.setup("fit")
    train_loader = dm.train_dataloader()
    train = batches(dm, train_loader)
    val = batches(dm, dm.val_dataloader())
    assert all(batch.shape == (4, 33) and batch.dtype == torch.long for batch in train + val[:-1])
    tokens = dm.manifest["splits"]["train"]["tokens"]
    assert len(train) == tokens // 33 // 4
    assert int(torch.cat(train).max()) < dm.vocab_size == 512
    assert sum(map(len, val)) == dm.manifest["splits"]["val"]["tokens"] // 33  # every val window, the last batch too
    assert not torch.equal(train[0], batches(dm, islice(train_loader, 1))[0])  # reshuffled each epoch
    first_val = batches(dm, islice(dm.val_dataloader(), 1))[0]
    assert torch.equal(first_val, val[0])  # not shuffled
    assert dm.tokenizer.decode(first_val[0].tolist()).startswith(" = ")  # an article's title


def test_tokenizer_facts_come_from_the_prepared_data(wikitext_overrides: list[str], prepared_wikitext: Path) -> None:
    dm = datamodule(wikitext_overrides)
    assert dm.prepared_dir == prepared_wikitext  # prepares (here: reuses) on first use
    assert dm.special_tokens == {"eot": 0, "pad": 1, "mask": 2, "sentinels": list(range(3, 103))}
    val = dm.manifest["splits"]["val"]
    assert dm.bytes_per_token == val["bytes"] / val["tokens"]


def test_window_set_before_setup_sizes_the_batches(wikitext_overrides: list[str], prepared_wikitext: Path) -> None:
    dm = datamodule(wikitext_overrides)
    dm.window = 32  # masked LM: no shifted target
    dm.setup("fit")
    assert batches(dm, islice(dm.train_dataloader(), 1))[0].shape == (4, 32)


def test_split_shorter_than_a_window_names_the_setting(wikitext_overrides: list[str], prepared_wikitext: Path) -> None:
    dm = datamodule(wikitext_overrides, seq_len=2**20)
    with pytest.raises(DataError, match=r"fewer than one window of 1048577 \(data\.seq_len=1048576\)"):
        dm.setup("fit")


@pytest.mark.parametrize("offsets", [[], ["data.random_offsets=true"]])
def test_loader_state_resumes_with_the_next_batches(
    wikitext_overrides: list[str], prepared_wikitext: Path, offsets: list[str]
) -> None:
    wikitext_overrides = [*wikitext_overrides, *offsets]
    dm = datamodule(wikitext_overrides)
    dm.setup("fit")
    uninterrupted = dm.train_dataloader()
    expected = batches(dm, islice(uninterrupted, 8))

    interrupted = dm.train_dataloader()
    assert len(list(islice(interrupted, 5))) == 5
    state = interrupted.state_dict()

    resumed_dm = datamodule(wikitext_overrides)
    resumed_dm.setup("fit")
    resumed = resumed_dm.train_dataloader()
    resumed.load_state_dict(state)
    continued = batches(dm, islice(resumed, 3))
    assert all(torch.equal(want, got) for want, got in zip(expected[5:], continued, strict=True))


class RecordBatches(L.LightningModule):
    """The smallest module that trains: it only remembers the batches it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.seen.append(batch)
        return self.weight * batch.float().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(dm: TokenDataModule, max_steps: int, root: Path, ckpt_path: str | None = None) -> list[torch.Tensor]:
    model = RecordBatches()
    trainer = L.Trainer(
        max_steps=max_steps,
        limit_val_batches=0,
        default_root_dir=root,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=root, every_n_train_steps=3, save_top_k=-1)],
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.parametrize("offsets", [[], ["data.random_offsets=true"]])
def test_lightning_checkpoint_resumes_mid_epoch(
    wikitext_overrides: list[str], prepared_wikitext: Path, tmp_path: Path, offsets: list[str]
) -> None:
    wikitext_overrides = [*wikitext_overrides, *offsets]
    uninterrupted = fit(datamodule(wikitext_overrides), 6, tmp_path / "a")
    fit(datamodule(wikitext_overrides), 3, tmp_path / "b")
    [checkpoint] = (tmp_path / "b").glob("*step=3.ckpt")
    resumed = fit(datamodule(wikitext_overrides), 6, tmp_path / "b", str(checkpoint))
    assert all(torch.equal(want, got) for want, got in zip(uninterrupted[3:], resumed, strict=True))


def epochs(dm: TokenDataModule, count: int) -> list[list[torch.Tensor]]:
    dm.setup("fit")
    loader = dm.train_dataloader()
    return [[window for batch in batches(dm, loader) for window in batch] for _ in range(count)]


def test_random_offsets_cut_the_text_anew_each_epoch_and_repeat_for_the_same_seed(
    wikitext_overrides: list[str], prepared_wikitext: Path
) -> None:
    fixed = epochs(datamodule(wikitext_overrides, seq_len=2048), 2)
    assert sorted(map(tuple, fixed[0])) == sorted(map(tuple, fixed[1]))  # the same windows, reshuffled

    shifted = epochs(datamodule([*wikitext_overrides, "data.random_offsets=true"], seq_len=2048), 2)
    assert len(shifted[0]) == len(fixed[0])
    first, second = ({tuple(w.tolist()) for w in epoch} for epoch in shifted)
    assert len(first & second) < 0.05 * len(first)  # other cuts of the text
    assert len(first & {tuple(w.tolist()) for w in fixed[0]}) < 0.05 * len(first)
    stream = split_tokens(prepared_wikitext, datamodule(wikitext_overrides).manifest, "train").tolist()
    text = " ".join(map(str, stream))
    assert all(" ".join(map(str, w.tolist())) in text for w in shifted[1][:20])  # each window: consecutive tokens

    again = epochs(datamodule([*wikitext_overrides, "data.random_offsets=true"], seq_len=2048), 2)
    assert all(torch.equal(a, b) for a, b in zip(shifted[0] + shifted[1], again[0] + again[1], strict=True))
    other_seed = epochs(datamodule([*wikitext_overrides, "data.random_offsets=true", "data.seed=7"], seq_len=2048), 1)
    assert {tuple(w.tolist()) for w in other_seed[0]} != first


def test_window_offsets_are_spread_over_the_window_and_fixed_by_seed_epoch_and_index() -> None:
    offsets = [window_offset(42, 1, index, 33) for index in range(3300)]
    assert set(offsets) == set(range(33))
    assert offsets == [window_offset(42, 1, index, 33) for index in range(3300)]
    assert offsets != [window_offset(42, 2, index, 33) for index in range(3300)]
