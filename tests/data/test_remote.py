"""data.output_dir=s3://…: prepared data published to object storage and streamed back by training, against a real
S3-compatible server (moto) on loopback over HTTPS."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import boto3
import hydra
import pytest

from lmpre.data.datamodule import TokenDataModule
from lmpre.errors import DataError
from lmpre.train import train
from tests.hydra_configs import compose_config
from tests.s3_server import S3Server, s3_server

BUCKET = "lmpre-test"
TINY = [
    "data=shakespeare",
    "model.backbone.d_model=32",
    "model.backbone.n_layer=1",
    "model.backbone.n_head=2",
    "model.sample_tokens=4",
    "trainer.max_steps=4",
    "trainer.val_check_interval=4",
    "trainer.limit_val_batches=2",
    "trainer.num_sanity_val_steps=0",
    "callbacks.progress=null",
]


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    with s3_server(tmp_path) as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield server


def objects(prefix: str) -> dict[str, bytes]:
    client = boto3.client("s3")
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {item["Key"]: client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read() for item in listed}


def datamodule(tmp_path: Path, *overrides: str) -> TokenDataModule:
    cfg = compose_config("prepare", "data=shakespeare", f"data.cache_dir={tmp_path / 'cache'}", *overrides)
    return hydra.utils.instantiate(cfg.data)


def test_training_streams_the_published_shards_from_object_storage(s3: S3Server, tmp_path: Path) -> None:
    url = f"s3://{BUCKET}/prepared/shakespeare"
    cfg = compose_config(
        "train", *TINY, f"data.output_dir={url}", f"data.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path}"
    )
    metrics = train(cfg)

    published = objects("prepared/shakespeare/")
    local = next((tmp_path / "cache" / "prepared").iterdir())
    for path in local.rglob("*"):  # a byte-identical copy of the local build, manifest included
        if path.is_file():
            assert published[f"prepared/shakespeare/{path.relative_to(local).as_posix()}"] == path.read_bytes()
    assert not any(key.endswith(".lmpre-uploading") for key in published)
    # The training read its windows from the store, not from the local build.
    streamed = [r for r in s3.requests if r.startswith(f"GET /{BUCKET}/prepared/shakespeare/corpus/train/chunk-")]
    assert streamed, s3.requests
    assert list((tmp_path / "cache" / "streams").rglob("chunk-*.bin"))
    assert math.isfinite(metrics["val/loss"])


def test_a_complete_copy_is_reused_and_an_interrupted_upload_is_finished(s3: S3Server, tmp_path: Path) -> None:
    url = f"s3://{BUCKET}/shakespeare"
    datamodule(tmp_path, f"data.output_dir={url}").prepare_data()
    puts = sum(r.startswith("PUT") for r in s3.requests)
    datamodule(tmp_path, f"data.output_dir={url}").prepare_data()
    assert sum(r.startswith("PUT") for r in s3.requests) == puts  # nothing uploaded again

    # An upload killed before its manifest: the marker and some of the files are there.
    client = boto3.client("s3")
    client.delete_object(Bucket=BUCKET, Key="shakespeare/manifest.json")
    client.put_object(Bucket=BUCKET, Key="shakespeare/.lmpre-uploading", Body=b"")
    client.delete_object(Bucket=BUCKET, Key="shakespeare/corpus/train/index.json")
    dm = datamodule(tmp_path, f"data.output_dir={url}")
    dm.prepare_data()
    published = objects("shakespeare/")
    assert {"shakespeare/manifest.json", "shakespeare/corpus/train/index.json"} <= set(published)
    assert "shakespeare/.lmpre-uploading" not in published
    assert dm.shards_root == url


def test_a_prefix_lmpre_did_not_write_is_never_written_into(s3: S3Server, tmp_path: Path) -> None:
    boto3.client("s3").put_object(Bucket=BUCKET, Key="theirs/notes.txt", Body=b"mine")
    with pytest.raises(DataError, match="not empty and holds no lmpre manifest"):
        datamodule(tmp_path, f"data.output_dir=s3://{BUCKET}/theirs").prepare_data()
    assert objects("theirs/") == {"theirs/notes.txt": b"mine"}


def test_a_copy_of_other_settings_is_not_replaced(s3: S3Server, tmp_path: Path) -> None:
    url = f"s3://{BUCKET}/data"
    datamodule(tmp_path, f"data.output_dir={url}").prepare_data()
    manifest = objects("data/manifest.json")
    with pytest.raises(DataError, match="other settings"):
        datamodule(tmp_path, f"data.output_dir={url}", "data.sources.corpus.val_fraction=0.2").prepare_data()
    assert objects("data/manifest.json") == manifest


def test_storage_errors_name_the_setting_and_the_fix(s3: S3Server, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no-such-bucket.*exists"):
        datamodule(tmp_path, "data.output_dir=s3://no-such-bucket/x").prepare_data()
    with pytest.raises(DataError, match="s3://BUCKET/PREFIX only"):
        datamodule(tmp_path, "data.output_dir=gs://bucket/x").prepare_data()
    assert not (tmp_path / "cache" / "documents").exists()  # refused before any work
